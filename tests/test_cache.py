import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from helpers import assert_same_cache, dump_cfg, QUIET, tiny_spec, write_yaml
from offline_kd.cache.reader import TeacherCache
from offline_kd.cli import main
from offline_kd.config import ModelConfig, build_dataclass
from offline_kd.data.corpus import Corpus, SplitReader, SplitWriter
from offline_kd.errors import OfflineKDError
from offline_kd.models.bilstm import BiLSTMCTC
from offline_kd.commands import dump_teacher
from offline_kd.models.checkpoint import model_from_checkpoint, save_checkpoint
from offline_kd.runtime.loaders import iterate_outputs, loader_for, sorted_batches


def test_float32_cache_equals_live_teacher_exactly(tiny_teacher, tiny_corpus, tmp_path):
    out = tmp_path / "c.zarr"
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, out), **QUIET)
    cache = TeacherCache(str(out))
    model, vocab, _ = model_from_checkpoint(tiny_teacher)
    corpus = Corpus(tiny_corpus)
    for split_name in ("train", "dev"):
        reader = corpus.split(split_name)
        split = cache.split(split_name)
        batches = sorted_batches(reader, np.arange(len(reader)), 8, None)
        n = 0
        for batch, lp, out_len, hidden in iterate_outputs(model, loader_for(reader, vocab, batches), "cpu", [1, 3]):
            for b, i in enumerate(batch["indices"]):
                got = split.read(split.position[reader.utterance_ids[i]])
                t = int(out_len[b])
                np.testing.assert_array_equal(got["log_probs"], lp[:t, b].numpy())
                np.testing.assert_array_equal(got["hidden"][3], hidden[3][b, :t].numpy())
                np.testing.assert_array_equal(got["best_path"], lp[:t, b].argmax(-1).numpy())
                n += 1
        assert n == len(reader) == len(split)
    res = CliRunner().invoke(main, ["cache", "verify", str(out), "--teacher", str(tiny_teacher), "--sample", "4",
                                    "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    v = json.loads(res.output.strip().splitlines()[-1])
    assert v["ok"] and v["fidelity"]["top1_agreement"] == 1.0 and v["fidelity"]["kl_T1_max"] < 1e-9
    info = json.loads(CliRunner().invoke(main, ["cache", "info", str(out), "--json"]).output)
    assert info["utterances"] == 16 + 96 and info["complete"]
    assert info["codecs"]["log_probs"]["name"] == "float32"


def test_objects_do_not_grow_per_utterance(tiny_teacher, tiny_corpus, tmp_path):
    out = tmp_path / "c.zarr"
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, out, splits=["train"], chunk_frames=64, shard_chunks=64),
                     **QUIET)
    files = [f for _, _, fs in os.walk(out) for f in fs]
    # 96 utterances; a per-utterance layout would need hundreds of files
    assert len(files) < 40


def test_compact_codecs_round_trip_through_a_cache(tiny_teacher, tiny_corpus, tmp_path):
    out = tmp_path / "c.zarr"
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, out, codecs={
        "log_probs": "topk", "topk_k": 4, "topk_coverage": 0.999, "hidden": "lowrank", "lowrank_rank": 16,
        "lowrank_fit_frames": 500, "lowrank_coeff": "int8", "compressor": "blosc"}), **QUIET)
    res = CliRunner().invoke(main, ["cache", "verify", str(out), "--teacher", str(tiny_teacher), "--json"])
    assert res.exit_code == 0, res.output
    f = json.loads(res.output.strip().splitlines()[-1])["fidelity"]
    assert f["top1_agreement"] > 0.99
    assert f["kl_T1_mean"] < 0.05
    assert all(e < 0.1 for e in f["hidden_relative_sq_error"].values())
    cache = TeacherCache(str(out))
    assert cache.meta.codecs["log_probs"] == {"name": "topk", "num_classes": 9, "k": 4, "coverage": 0.999,
                                                 "tail": "uniform"}


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tiny_corpus, tmp_path):
    # an untrained, wider teacher over a bigger corpus: slow enough to be killed mid-dump
    from offline_kd.data.synth import write_synth_corpus
    corpus = tmp_path / "corpus"
    write_synth_corpus(corpus, tiny_spec(num_train=400, num_dev=40, max_words=8), **QUIET)
    model = BiLSTMCTC(ModelConfig(input_dim=16, hidden_dim=160, num_layers=3, num_classes=9))
    from dataclasses import asdict
    teacher = tmp_path / "teacher.pt"
    save_checkpoint(teacher, {"model_config": asdict(model.config), "model_state_dict": model.state_dict(),
                              "vocab": Corpus(corpus).vocab.to_dict()})
    ref = tmp_path / "ref.zarr"
    dump_teacher.run(dump_cfg(teacher, corpus, ref, codecs={"log_probs": "float16"}), **QUIET)
    out = tmp_path / "killed.zarr"
    cfg_path = write_yaml(tmp_path / "dump.yaml", {"dump": {
        "teacher": str(teacher), "corpus": str(corpus), "output": str(out), "splits": ["train", "dev"],
        "layers": [1, 3], "batch_size": 8, "chunk_frames": 32, "shard_chunks": 2, "progress": False,
        "device": "cpu", "codecs": {"log_probs": "float16", "hidden": "float32"}}})
    # the same thread count as the in-process reference: BLAS may round differently with another
    proc = subprocess.Popen([sys.executable, "-m", "offline_kd", "dump-teacher", "--config", str(cfg_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    killed_at = None
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            done = int(zarr.open_array(str(out / "train/_progress/shard_done"), mode="r")[:].sum())
        except Exception:  # noqa: BLE001 - not created yet
            done = 0
        if done > 0:
            proc.send_signal(signal.SIGKILL)
            killed_at = done
            break
        time.sleep(0.005)
    proc.wait()
    assert killed_at is not None, "the dump finished before it could be killed"
    with pytest.raises(OfflineKDError, match="incomplete"):
        TeacherCache(str(out))
    res = CliRunner().invoke(main, ["dump-teacher", "--config", str(cfg_path)])
    assert res.exit_code == 0, res.output
    result = json.loads(res.output.strip().splitlines()[-1])
    total = sum(TeacherCache(str(ref)).split(s).num_frames for s in ("train", "dev"))
    assert result["resumed"] and 0 < result["frames_written"] < total      # it went on, it did not start over
    assert_same_cache(ref, out)


def test_fingerprints_and_overwrite_protection(tiny_teacher, tiny_corpus, tmp_path):
    base = tmp_path / "base.zarr"
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, base, splits=["dev"]), **QUIET)
    m0 = TeacherCache(str(base)).meta
    # another checkpoint
    ck = torch.load(tiny_teacher, weights_only=False)
    ck["model_state_dict"] = {k: v + 0.01 for k, v in ck["model_state_dict"].items()}
    other = tmp_path / "other.pt"
    save_checkpoint(other, ck)
    res = CliRunner().invoke(main, ["dump-teacher", "--config", str(write_yaml(tmp_path / "d.yaml", {"dump": {
        "teacher": str(other), "corpus": str(tiny_corpus), "output": str(base), "splits": ["dev"], "layers": [1, 3],
        "batch_size": 8, "chunk_frames": 32, "shard_chunks": 2, "progress": False, "device": "cpu",
        "codecs": {"log_probs": "float32", "hidden": "float32"}}}))])
    assert res.exit_code == 1 and "another teacher" in res.output and "--overwrite" in res.output
    assert TeacherCache(str(base)).meta.identity_sha256 == m0.identity_sha256   # untouched
    dump_teacher.run(dump_cfg(other, tiny_corpus, tmp_path / "o.zarr", splits=["dev"]), **QUIET)
    m1 = TeacherCache(str(tmp_path / "o.zarr")).meta
    assert m1.teacher["sha256"] != m0.teacher["sha256"] and m1.identity_sha256 != m0.identity_sha256
    # one feature value changed
    changed = tmp_path / "changed"
    shutil.copytree(tiny_corpus, changed)
    r = SplitReader(tiny_corpus / "dev.h5")
    w = SplitWriter(changed / "dev.h5", r.feature_dim)
    for i, u in enumerate(r.utterance_ids):
        f = r.features(i).copy()
        if i == 0:
            f[0, 0] += 1e-3
        w.add(u, f, r.transcripts[i])
    w.close()
    dump_teacher.run(dump_cfg(tiny_teacher, changed, tmp_path / "f.zarr", splits=["dev"]), **QUIET)
    c0, c2 = TeacherCache(str(base)).split("dev"), TeacherCache(str(tmp_path / "f.zarr")).split("dev")
    p = c0.position[r.utterance_ids[0]]
    assert c0.feature_hashes[p] != c2.feature_hashes[p]
    assert sum(a != b for a, b in zip(c0.feature_hashes, c2.feature_hashes)) == 1
    assert TeacherCache(str(tmp_path / "f.zarr")).meta.identity_sha256 != m0.identity_sha256
    # a changed vocabulary
    from offline_kd.data.vocab import Vocabulary
    v = Corpus(tiny_corpus).vocab
    assert Vocabulary(v.tokens[:-1] + ("zzz",), v.tokenizer, v.word_separator).sha256 != v.sha256


def test_features_changed_after_corpus_write_are_caught(tiny_teacher, tiny_corpus, tmp_path):
    import h5py
    bad = tmp_path / "bad"
    shutil.copytree(tiny_corpus, bad)
    with h5py.File(bad / "dev.h5", "r+") as f:
        f["features"][0, 0] += 1.0
    with pytest.raises(OfflineKDError, match="feature_sha256 mismatch"):
        dump_teacher.run(dump_cfg(tiny_teacher, bad, tmp_path / "x.zarr", splits=["dev"]), **QUIET)


def test_bad_dump_settings_are_one_line_errors(tiny_teacher, tiny_corpus, tmp_path):
    with pytest.raises(OfflineKDError, match="out of range"):
        dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, tmp_path / "x.zarr", layers=[7]), **QUIET)
    with pytest.raises(OfflineKDError, match="unknown codec"):
        dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, tmp_path / "y.zarr", codecs={"hidden": "int4"}),
                         **QUIET)
    with pytest.raises(OfflineKDError, match="no cache"):
        TeacherCache(str(tmp_path / "missing.zarr"))


def test_verify_detects_a_corrupted_value(tiny_teacher, tiny_corpus, tmp_path):
    out = tmp_path / "c.zarr"
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, out, splits=["dev"]), **QUIET)
    assert CliRunner().invoke(main, ["cache", "verify", str(out)]).exit_code == 0
    arr = zarr.open_array(str(out / "dev" / "hidden_3"), mode="r+")
    arr[5, 2] = arr[5, 2] + 0.5
    res = CliRunner().invoke(main, ["cache", "verify", str(out)])
    assert res.exit_code == 1 and "checksum mismatch" in res.output
    first = TeacherCache(str(out)).split("dev")
    bad = int(np.searchsorted(first.offsets, 5, side="right") - 1)
    assert first.utterance_ids[bad] in res.output


def test_a_non_cache_directory_is_never_replaced(tiny_teacher, tiny_corpus, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    for flag in ([], ["--overwrite"]):
        with pytest.raises(OfflineKDError, match="not an offline-kd cache"):
            dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, precious, splits=["dev"]), overwrite=bool(flag),
                             **QUIET)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_a_dump_whose_codec_fit_fails_can_be_rerun(tiny_teacher, tiny_corpus, tmp_path):
    """An impossible codec setting fails with a one-line error before anything is written; the corrected rerun
    then works at the same path without --overwrite."""
    out = tmp_path / "c.zarr"
    step = {"hidden": "lowrank", "lowrank_rank": 64, "lowrank_coeff": "step", "lowrank_fit_frames": 300}
    with pytest.raises(OfflineKDError, match="lowrank_target_error"):
        dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, out, splits=["dev"],
                                  codecs={**step, "lowrank_target_error": 1e-5}), **QUIET)
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, out, splits=["dev"],
                              codecs={**step, "lowrank_target_error": 0.02}), **QUIET)
    assert TeacherCache(str(out)).meta.complete


@pytest.mark.parametrize("codecs", [{"log_probs": "topk", "topk_k": 3, "topk_coverage": 0.99, "topk_tail": "prior",
                                     "lowrank_fit_frames": 300},
                                    {"log_probs": "sampled", "sampled_n": 16},
                                    {"log_probs": "lowrank", "logits_rank": 8, "hidden": "lowrank",
                                     "lowrank_rank": 6, "lowrank_coeff": "int8", "lowrank_fit_frames": 300},
                                    {"log_probs": "topk", "topk_k": 3, "topk_coverage": 0.99, "topk_tail": "lowrank",
                                     "logits_rank": 8, "hidden": "lowrank", "lowrank_rank": 64,
                                     "lowrank_coeff": "step", "lowrank_target_error": 0.01,
                                     "lowrank_fit_frames": 300}])
def test_fitted_and_sparse_caches_dump_verify_and_train(codecs, tiny_teacher, tiny_corpus, tmp_path):
    from conftest import experiment_dict
    from offline_kd.config import ExperimentConfig
    from offline_kd.commands import train_student
    out = tmp_path / "c.zarr"
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, out, codecs=codecs), **QUIET)
    cache = TeacherCache(str(out))
    if codecs.get("topk_tail") == "prior":
        prior = zarr.open_array(str(out / "prior/log_probs"), mode="r")[:]
        assert prior.shape == (9,) and abs(np.exp(prior.astype(np.float64)).sum() - 1) < 1e-3
        assert cache.lp_codec.prior is not None
    fitted_logits = codecs["log_probs"] == "lowrank" or codecs.get("topk_tail") == "lowrank"
    if fitted_logits:                               # 8 centred components of 9 classes: all the logits' freedom
        basis = zarr.open_array(str(out / "lowrank/log_probs/basis"), mode="r")[:]
        assert basis.shape == (8, 9)
        shape = cache.lp_codec if codecs["log_probs"] == "lowrank" else cache.lp_codec.shape
        assert shape.scale.shape == (8,)
    if codecs.get("lowrank_coeff") == "int8":
        assert all(c.scale.shape == (6,) for c in cache.hidden_codecs.values())
    if codecs.get("lowrank_coeff") == "step":                 # codes stored component-major, the step in the cache
        assert all(c.step.shape == (1,) for c in cache.hidden_codecs.values())
        codes = zarr.open_array(str(out / "train/hidden_1/codes"), mode="r")
        assert "TransposeCodec" in repr(codes.metadata.codecs)
    res = CliRunner().invoke(main, ["cache", "verify", str(out), "--teacher", str(tiny_teacher), "--json"])
    assert res.exit_code == 0, res.output
    fid = json.loads(res.output.strip().splitlines()[-1])["fidelity"]
    assert fid["top1_agreement"] > 0.9
    if fitted_logits:
        assert fid["kl_T1_mean"] < 1e-3 and fid["kl_T4_mean"] < 1e-3
    if codecs.get("lowrank_coeff") == "step":                 # the live error is close to the fitted target
        assert max(fid["hidden_relative_sq_error"].values()) < 0.02
    d = experiment_dict(tiny_corpus, tmp_path / "student", epochs=1)
    d["distill"] = {"cache": str(out), "temperature_schedule": [[1, 2.0]], "layer_mapping": {1: 1, 2: 3}}
    train_student.run(build_dataclass(ExperimentConfig, d), **QUIET)
    rows = [json.loads(x) for x in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["train_total"]) for r in rows if r["event"] == "epoch")


def test_cache_meta_round_trips_and_keeps_keys_it_does_not_know(tiny_teacher, tiny_corpus, tmp_path):
    from offline_kd.cache.meta import CacheMeta
    out = tmp_path / "c.zarr"
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, out, splits=["dev"]), **QUIET)
    stored = dict(zarr.open_group(str(out), mode="r").attrs["offline_kd"])
    meta = CacheMeta.from_dict(stored)
    assert meta.to_dict() == stored and meta.complete and meta.layer_dims == {1: 64, 3: 64}
    newer = CacheMeta.from_dict({**stored, "written_by_a_newer_tool": [1, 2]})
    assert newer.to_dict()["written_by_a_newer_tool"] == [1, 2]
    with pytest.raises(OfflineKDError, match="lacks num_classes"):
        CacheMeta.from_dict({k: v for k, v in stored.items() if k != "num_classes"}, "x.zarr")
