"""Hugging Face teachers (Wav2Vec2ForCTC, HubertForCTC, WavLMForCTC) from a local directory: tiny randomly
initialised models saved into a temporary directory (nothing is downloaded), dumped from the corpus's kept audio.
The cache equals transformers' own forward on the same samples, mapped onto the student's vocabulary by hand; the
cache verifies against the live teacher; a student trains from it, and with --online-teacher on the same targets;
every wrong directory or setting is a one-line error with nothing written."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from helpers import QUIET, dump_cfg, step_records, write_yaml
from offline_kd.cache.reader import TeacherCache
from offline_kd.cli import main
from offline_kd.commands import dump_teacher, train_student
from offline_kd.config import ExperimentConfig, build_dataclass
from offline_kd.data.corpus import Corpus
from offline_kd.errors import OfflineKDError
from test_audio_import import nemo_corpus, run

transformers = pytest.importorskip("transformers")

HF_VOCAB = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, "A": 5, "B": 6}
TINY = dict(vocab_size=len(HF_VOCAB), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=24, conv_dim=(8,) * 7, num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
            pad_token_id=0, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
            feat_proj_dropout=0.0, final_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0)
KINDS = {"wav2vec2": ("Wav2Vec2Config", "Wav2Vec2ForCTC", "group"),
         "hubert": ("HubertConfig", "HubertForCTC", "layer"),
         "wavlm": ("WavLMConfig", "WavLMForCTC", "layer")}


def save_tiny(d: Path, kind: str, seed: int = 0, vocab: dict = HF_VOCAB) -> Path:
    cfg_cls, model_cls, norm = KINDS[kind]
    torch.manual_seed(seed)
    extra = {"num_buckets": 32, "max_bucket_distance": 64} if kind == "wavlm" else {}
    cfg = getattr(transformers, cfg_cls)(**{**TINY, "vocab_size": len(vocab)}, feat_extract_norm=norm,
                                         do_stable_layer_norm=norm == "layer", **extra)
    model = getattr(transformers, model_cls)(cfg).eval()
    model.save_pretrained(str(d), safe_serialization=True)
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>",
                                                          "unk_token": "<unk>", "word_delimiter_token": "|"}))
    (d / "preprocessor_config.json").write_text(json.dumps({"sampling_rate": 16000, "do_normalize": True,
                                                            "feature_size": 1, "padding_value": 0.0,
                                                            "return_attention_mask": norm == "layer"}))
    return d


@pytest.fixture(scope="module")
def audio_corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("hf_audio")
    m = nemo_corpus(d, n=10)
    code, out = run("--manifest", m, "--out", d / "corpus", "--keep-audio", "--cmvn", "utterance")
    assert code == 0, out
    return d / "corpus"


@pytest.fixture(scope="module", params=sorted(KINDS))
def hf_dir(request, tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp(f"hf_{request.param}"), request.param)


def hf_cfg(model_dir, corpus, out, **kw):
    # a random tiny model puts ~40% of its mass on <s>, </s>, <unk>, which the map drops (a trained one: ~0)
    kw.setdefault("max_dropped_mass", 1.0)
    return dump_cfg({"huggingface": str(model_dir)}, corpus, out, layers=kw.pop("layers", [1, 2]), **kw)


def own_forward(model_dir: Path, samples: np.ndarray):
    """transformers' own forward on one utterance, as its documentation shows: the feature extractor, then the model."""
    fe = transformers.Wav2Vec2FeatureExtractor.from_pretrained(str(model_dir))
    model = transformers.AutoModelForCTC.from_pretrained(str(model_dir)).eval()
    inputs = fe(samples.astype(np.float32) / 32768.0, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        out = model(inputs.input_values, output_hidden_states=True)
    return torch.log_softmax(out.logits[0].double(), -1).numpy(), [h[0].numpy() for h in out.hidden_states]


def by_hand(lp: np.ndarray, student_tokens) -> np.ndarray:
    """The student's log-probs from the teacher's: <pad> -> blank, | -> separator, A -> a, B -> b, specials
    dropped and the rest renormalised."""
    p = np.exp(lp)
    where = {"<blank>": [0], "a": [5], "b": [6], "|": [4]}
    q = np.stack([p[:, where[t]].sum(1) for t in student_tokens], 1)
    return np.log(q / q.sum(1, keepdims=True))


def test_the_cache_equals_transformers_own_forward(hf_dir, audio_corpus, tmp_path):
    out = tmp_path / "hf.zarr"
    dump_teacher.run(hf_cfg(hf_dir, audio_corpus, out), **QUIET)
    cache = TeacherCache(str(out))
    reader = Corpus(audio_corpus).split("train")
    tokens = Corpus(audio_corpus).vocab.tokens
    assert cache.meta.subsampling == 2 and cache.meta.teacher["adapter"] == "huggingface"
    split = cache.split("train")
    for u in split.utterance_ids:
        i = reader.index[u]
        lp, hidden = own_forward(hf_dir, reader.audio(i))
        got = split.read(split.position[u])
        n = -(-int(reader.lengths[i]) // 2)
        assert got["log_probs"].shape == (n, len(tokens))
        m = min(n, len(lp))
        np.testing.assert_allclose(got["log_probs"][:m], by_hand(lp, tokens)[:m], atol=2e-5)
        for L in (1, 2):
            np.testing.assert_allclose(got["hidden"][L][:m], hidden[L][:m], atol=2e-5)
    info = CliRunner().invoke(main, ["cache", "info", str(out)])
    assert info.exit_code == 0 and f"Hugging Face model {hf_dir}" in info.output, info.output
    assert "vocabulary alignment: merged (1 blank, 1 same, 2 case folded, 3 dropped)" in info.output, info.output
    assert "frame alignment: teacher frame shift 320, student 320 samples" in info.output


def test_verify_and_train_from_the_cache_and_online_alike(audio_corpus, tmp_path):
    model_dir = save_tiny(tmp_path / "w2v", "wav2vec2")
    out = tmp_path / "hf.zarr"
    dump_teacher.run(hf_cfg(model_dir, audio_corpus, out, splits=["train"]), **QUIET)
    inline = json.dumps({"huggingface": str(model_dir)})
    res = CliRunner().invoke(main, ["cache", "verify", str(out), "--teacher", inline, "--sample", "4", "--json"])
    assert res.exit_code == 0, res.output
    fid = json.loads(res.output)["fidelity"]
    assert fid["kl_T1_max"] < 1e-9 and fid["top1_agreement"] == 1.0
    runs = []
    for name, teacher in (("offline", None), ("online", inline)):
        d = {"data": {"corpus": str(audio_corpus), "batch_size": 4, "num_buckets": 1},
             "model": {"input_dim": 80, "hidden_dim": 8, "num_layers": 2, "num_classes": 4, "dropout": 0.0},
             "train": {"epochs": 1, "lr": 0.01, "output_dir": str(tmp_path / name), "progress": False,
                       "log_every": 1, "seed": 0},
             "distill": {"cache": str(out), "layer_mapping": {1: 1, 2: 2}, "alpha": 0.7, "beta": 0.2, "gamma": 0.1}}
        cfg = build_dataclass(ExperimentConfig, d)
        train_student.run(cfg, online_teacher=teacher, **QUIET)
        runs.append(step_records(tmp_path / name))
    off, on = runs
    assert len(off) == len(on) > 0
    for a, b in zip(off, on):
        for k in ("train/soft", "train/ctc", "train/feature", "train/total"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), (a["step"], k)


@pytest.mark.parametrize("case, expect", [
    ("no_weights", "has no weights (model.safetensors)"),
    ("pickle_only", "has only pickled weights"),
    ("no_vocab", "has no vocab.json"),
    ("bad_layer", "dump.layers: [3] out of range; the teacher has layers 1, 2"),
    ("unmappable", "the teacher's tokens 'Z' have no counterpart in the student's vocabulary"),
    ("ratio", "the student's frame shift is 1.5 times the teacher's"),
    ("views", "dump.views act on features"),
    ("no_audio", "keeps no audio"),
    ("bad_map", "vocabulary_map: 'Q' is not among the teacher's tokens"),
])
def test_a_wrong_hf_teacher_is_a_one_line_error_and_writes_nothing(audio_corpus, tmp_path, case, expect):
    d = save_tiny(tmp_path / "m", "wav2vec2", vocab={**HF_VOCAB, "Z": 7} if case == "unmappable" else HF_VOCAB)
    spec, kw, corpus = {"huggingface": str(d)}, {}, audio_corpus
    if case == "no_weights":
        (d / "model.safetensors").unlink()
    elif case == "pickle_only":
        (d / "model.safetensors").rename(d / "pytorch_model.bin")
    elif case == "no_vocab":
        (d / "vocab.json").unlink()
    elif case == "bad_layer":
        kw["layers"] = [3]
    elif case == "ratio":
        kw["subsampling"] = 3
    elif case == "views":
        kw.update(views=[{"speed": 1.0}], view_splits=["train"])
    elif case == "no_audio":        # the same manifest imported without --keep-audio
        corpus = tmp_path / "features_only"
        assert run("--manifest", audio_corpus.parent / "manifest.json", "--out", corpus)[0] == 0
    elif case == "bad_map":
        (tmp_path / "map.yaml").write_text("Q: a\n")
        spec["vocabulary_map"] = str(tmp_path / "map.yaml")
    out = tmp_path / "c.zarr"
    with pytest.raises(OfflineKDError) as err:
        dump_teacher.run(dump_cfg(spec, corpus, out, layers=kw.pop("layers", [1, 2]), max_dropped_mass=1.0, **kw),
                         **QUIET)
    msg = str(err.value)
    assert expect in msg and "\n" not in msg, msg
    assert not out.exists()


def test_an_explicit_mapping_file_and_the_cli(audio_corpus, tmp_path):
    """A mapping file that sends B to a (and drops nothing else): the cache records it, `cache info` prints it, and
    the student's 'b' is reached by no teacher class."""
    d = save_tiny(tmp_path / "m", "hubert")
    (tmp_path / "map.yaml").write_text("B: a\n")
    cfg = write_yaml(tmp_path / "dump.yaml", {"dump": {
        "teacher": {"huggingface": str(d), "vocabulary_map": str(tmp_path / "map.yaml")}, "corpus": str(audio_corpus),
        "output": str(tmp_path / "c.zarr"), "splits": ["train"], "layers": [2], "progress": False, "device": "cpu",
        "allow_unreached": True, "max_dropped_mass": 1.0}})
    res = CliRunner().invoke(main, ["dump-teacher", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    meta = TeacherCache(str(tmp_path / "c.zarr")).meta
    v = meta.teacher["alignment"]["vocabulary"]
    assert v["unreached"] == ["b"] and v["counts"]["explicit"] == 1 and ["B", "a"] in v["pairs"]
    info = CliRunner().invoke(main, ["cache", "info", str(tmp_path / "c.zarr")])
    assert "student tokens no teacher class reaches (1): 'b'" in info.output, info.output
    # 'b' is in the transcripts: dumped only because dump.allow_unreached says so, which the cache records
    assert "unreached tokens the transcripts use (dumped with dump.allow_unreached): 'b' " in info.output
    assert "teacher probability on dropped classes: mean " in info.output


@pytest.mark.slow
def test_torchrun_shards_and_lm_nbest_with_an_hf_teacher(audio_corpus, tmp_path):
    """The sharded dump under torchrun equals the single-process one, and the LM N-best is stored from the HF
    teacher's (mapped) log-probs."""
    from helpers import assert_same_cache, write_unigram_arpa
    from test_distributed import _one_thread, torchrun
    model_dir = save_tiny(tmp_path / "w2v", "wav2vec2")
    arpa = write_unigram_arpa(tmp_path / "lm.arpa", ["ab", "ba", "a", "b", "abba"], ("ab", "ba"))
    lm = {"lm": str(arpa), "splits": ["train"], "nbest": 2, "beam_width": 4, "num_processes": 1}
    kw = dict(codecs={"log_probs": "float16", "hidden": "float16"}, lm_targets=lm)
    ref = tmp_path / "ref.zarr"
    _one_thread(dump_teacher.run, hf_cfg(model_dir, audio_corpus, ref, **kw))
    out = tmp_path / "dist.zarr"
    y = write_yaml(tmp_path / "d.yaml", {"dump": {
        "teacher": {"huggingface": str(model_dir)}, "corpus": str(audio_corpus), "output": str(out),
        "splits": ["train", "dev"], "layers": [1, 2], "batch_size": 8, "chunk_frames": 32, "shard_chunks": 2,
        "progress": False, "device": "cpu", "max_dropped_mass": 1.0, **kw}})
    res = torchrun("dump-teacher", "--config", y)
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same_cache(ref, out)
    split = TeacherCache(str(out)).split("train")
    assert split.has_lm_nbest and len(split.lm_nbest(0)) >= 1


def test_special_tokens_only_in_added_tokens_decoder_and_a_changed_preprocessor_is_another_cache(audio_corpus,
                                                                                                   tmp_path):
    """transformers' tokenizer writes <s> and </s> only into added_tokens_decoder: they are still the model's
    classes and are dropped as special. Changing the normalisation changes the cache's identity: no resume."""
    d = save_tiny(tmp_path / "m", "wav2vec2")
    vocab = {t: i for t, i in HF_VOCAB.items() if t not in ("<s>", "</s>")}
    (d / "vocab.json").write_text(json.dumps(vocab))
    tok = json.loads((d / "tokenizer_config.json").read_text())
    tok["added_tokens_decoder"] = {"1": {"content": "<s>"}, "2": {"content": "</s>"}, "9": {"content": "<x>"}}
    (d / "tokenizer_config.json").write_text(json.dumps(tok))
    out = tmp_path / "c.zarr"
    dump_teacher.run(hf_cfg(d, audio_corpus, out, splits=["train"]), **QUIET)
    assert TeacherCache(str(out)).meta.teacher["alignment"]["vocabulary"]["counts"]["dropped"] == 3
    pre = json.loads((d / "preprocessor_config.json").read_text())
    (d / "preprocessor_config.json").write_text(json.dumps({**pre, "do_normalize": False}))
    with pytest.raises(OfflineKDError) as err:
        dump_teacher.run(hf_cfg(d, audio_corpus, out, splits=["train"]), **QUIET)
    assert "\n" not in str(err.value)


def test_transformers_5_processor_config_is_read_and_is_part_of_the_identity(audio_corpus, tmp_path):
    """transformers 5 saves the feature extractor's settings in processor_config.json (under "feature_extractor"),
    not preprocessor_config.json: an 8 kHz model is refused on 16 kHz audio, naming the import option that
    resamples, and a changed normalisation there is another cache (issue #45 item 1)."""
    d = save_tiny(tmp_path / "m", "wav2vec2")
    pre = json.loads((d / "preprocessor_config.json").read_text())
    (d / "preprocessor_config.json").unlink()
    proc = {"feature_extractor": {**pre, "sampling_rate": 8000}, "processor_class": "Wav2Vec2Processor"}
    (d / "processor_config.json").write_text(json.dumps(proc))
    out = tmp_path / "c.zarr"
    with pytest.raises(OfflineKDError) as err:
        dump_teacher.run(hf_cfg(d, audio_corpus, out, splits=["train"]), **QUIET)
    assert "reads 8000 Hz audio" in str(err.value) and "--sample-rate 8000" in str(err.value), err.value
    assert not out.exists()
    proc["feature_extractor"]["sampling_rate"] = 16000
    (d / "processor_config.json").write_text(json.dumps(proc))
    dump_teacher.run(hf_cfg(d, audio_corpus, out, splits=["train"]), **QUIET)
    proc["feature_extractor"]["do_normalize"] = False
    (d / "processor_config.json").write_text(json.dumps(proc))
    with pytest.raises(OfflineKDError) as err:
        dump_teacher.run(hf_cfg(d, audio_corpus, out, splits=["train"]), **QUIET)
    assert "another teacher" in str(err.value)


def test_verify_with_other_alignment_options_is_a_one_line_error(audio_corpus, tmp_path):
    d = save_tiny(tmp_path / "m", "hubert")
    out = tmp_path / "c.zarr"
    dump_teacher.run(dump_cfg({"huggingface": str(d), "hidden_pooling": "stack"}, audio_corpus, out,
                              splits=["train"], layers=[1], subsampling=4, skip_invalid=True,
                              max_dropped_mass=1.0), **QUIET)
    assert TeacherCache(str(out)).meta.layers == {"1": 32}
    # left out: the options the cache was dumped with (#45); given otherwise: refused
    res = CliRunner().invoke(main, ["cache", "verify", str(out), "--teacher", json.dumps({"huggingface": str(d)})])
    assert res.exit_code == 0 and "using the hidden_pooling the cache was dumped with" in res.output, res.output
    res = CliRunner().invoke(main, ["cache", "verify", str(out), "--teacher",
                                    json.dumps({"huggingface": str(d), "hidden_pooling": "mean"})])
    assert res.exit_code != 0 and "differs from the one" in res.output and "Traceback" not in res.output, res.output


def test_a_model_id_comes_from_the_local_hugging_face_cache_and_nothing_is_downloaded(audio_corpus, tmp_path,
                                                                                      monkeypatch):
    """#45 item 10: `{huggingface: owner/name}` is the snapshot in HF_HUB_CACHE (the layout `huggingface-cli
    download` leaves); the cache equals the one dumped from the directory itself; an id not there is one line
    saying where it looked."""
    import shutil
    hub = tmp_path / "hub"
    snap = hub / "models--acme--tiny-w2v" / "snapshots" / ("0" * 40)
    save_tiny(tmp_path / "src", "wav2vec2")
    shutil.copytree(tmp_path / "src", snap)
    (hub / "models--acme--tiny-w2v" / "refs").mkdir(parents=True)
    (hub / "models--acme--tiny-w2v" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    by_id = tmp_path / "by_id.zarr"
    cfg = hf_cfg(tmp_path / "src", audio_corpus, by_id)
    dump_teacher.run(dataclasses.replace(cfg, teacher={"huggingface": "acme/tiny-w2v"}), **QUIET)
    by_dir = tmp_path / "by_dir.zarr"
    dump_teacher.run(hf_cfg(tmp_path / "src", audio_corpus, by_dir), **QUIET)
    a, b = TeacherCache(str(by_id)), TeacherCache(str(by_dir))
    assert a.meta.teacher["sha256"] == b.meta.teacher["sha256"]
    np.testing.assert_array_equal(a.split("train").read(0)["log_probs"], b.split("train").read(0)["log_probs"])
    with pytest.raises(OfflineKDError, match="models--acme--not-there.*nothing is downloaded"):
        dump_teacher.run(dataclasses.replace(cfg, teacher={"huggingface": "acme/not-there"},
                                             output=str(tmp_path / "none.zarr")), **QUIET)
    assert not (tmp_path / "none.zarr").exists()
