"""The codecs on a torch device (#14 items 3 and 4). `dump.encode_on`: the dump encodes where the teacher ran and
copies only the codes to the host (`DeviceEncoder`). `distill.decode_on`: the loader sends the stored codes, the
training process decodes them with the cache's codecs (`TargetDecoder`). On a CPU `device` runs the same torch code
in the main process, so these tests check it against the host (numpy) path; tests/test_cuda.py does so on a GPU."""

import numpy as np
import pytest
import torch

from helpers import CODECS, QUIET, dump_cfg, step_records, student_dict
from offline_kd.cache.reader import TargetDecoder, TeacherCache
from offline_kd.commands import dump_teacher, train_student
from offline_kd.cache.verify import verify_cache
from offline_kd.config import DistillConfig, DumpConfig, ExperimentConfig, build_dataclass
from offline_kd.data.corpus import Corpus
from offline_kd.data.distill_dataset import DistillBatchDataset
from offline_kd.data.targets import EncodedTargets
from offline_kd.errors import OfflineKDError

COMPACT = "topk-lowrank+lowrank-step"


@pytest.fixture(scope="module")
def caches(tiny_teacher, tiny_corpus, tmp_path_factory):
    out = {}
    for name in ("float16", COMPACT, "topk-prior+lowrank-int8"):
        path = tmp_path_factory.mktemp("dcache") / f"{name}.zarr"
        dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, path, splits=["train", "untranscribed", "dev"],
                                  codecs=CODECS[name]), **QUIET)
        out[name] = path
    return out


@pytest.mark.parametrize("name", ["float16", COMPACT, "topk-prior+lowrank-int8"])
def test_codes_decoded_on_device_equal_the_host_decoding(caches, tiny_corpus, name):
    cache = TeacherCache(str(caches[name]))
    corpus = Corpus(tiny_corpus)
    train_r, untr_r = corpus.split("train"), corpus.split("untranscribed")
    parts = dict(targets=cache.split("train"), layers={3},          # the cache holds layers 1 and 3
                 untranscribed=[(untr_r, cache.split("untranscribed"))])
    host = DistillBatchDataset(train_r, corpus.vocab, **parts)
    coded = DistillBatchDataset(train_r, corpus.vocab, **parts, encoded=True)
    batch = [0, 5, 6, 7, len(train_r) + 3, len(train_r) + 4]       # two runs of train, one of untranscribed
    want, got = host[batch], coded[batch]
    assert isinstance(got["teacher"], EncodedTargets)
    sent = {k.split("/")[0] for k in got["teacher"].codes}
    assert "hidden_3" in sent and "hidden_1" not in sent            # only the layers asked for travel
    t = got["teacher"].decode(TargetDecoder(cache), torch.device("cpu"))
    w = want["teacher"]
    assert torch.equal(t.lengths, w.lengths) and torch.equal(t.tokens, w.tokens)
    assert torch.equal(t.token_lengths, w.token_lengths) and set(t.hidden) == set(w.hidden) == {3}
    for a, b in [(t.log_probs, w.log_probs), (t.hidden[3], w.hidden[3])]:
        assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
        assert torch.equal(torch.isneginf(a), torch.isneginf(b))
        fin = torch.isfinite(b)
        if name == "float16":
            assert torch.equal(a[fin], b[fin])
        else:
            torch.testing.assert_close(a[fin], b[fin], rtol=1e-5, atol=2e-5)
    assert torch.equal(got["features"], want["features"]) and torch.equal(got["labelled"], want["labelled"])


@pytest.mark.parametrize("name", ["float16", COMPACT])
def test_train_student_decoding_on_device_trains_like_on_the_host(caches, tiny_corpus, tmp_path, name, monkeypatch):
    decoded = []          # batches that reached the loss still encoded, and were decoded there
    real = EncodedTargets.decode
    monkeypatch.setattr(EncodedTargets, "decode", lambda self, *a: decoded.append(1) or real(self, *a))
    runs = {}
    for where in ("host", "device"):
        d = student_dict(tiny_corpus, caches[name], tmp_path / where, epochs=2, decode_on=where,
                         untranscribed_splits=["untranscribed"])
        lines = []
        decoded.clear()
        train_student.run(build_dataclass(ExperimentConfig, d), log=lines.append)
        assert any(f"cached targets decoded on {'cpu' if where == 'device' else 'the host'}" in ln for ln in lines)
        runs[where] = step_records(tmp_path / where)
        assert (len(decoded) == len(runs[where])) if where == "device" else not decoded
    host, dev = runs["host"], runs["device"]
    assert len(host) == len(dev) > 0
    for a, b in zip(host, dev):
        for k in ("train/soft", "train/ctc", "train/feature", "train/total"):
            if name == "float16":     # dense codes: the same float32 values, the same training to the bit
                assert a[k] == b[k], k
            else:
                assert a[k] == pytest.approx(b[k], rel=1e-4), k


def test_decode_on_is_validated_and_may_change_on_resume(caches, tiny_corpus, tmp_path):
    with pytest.raises(OfflineKDError, match="distill.decode_on must be auto, host or device, got 'gpu'"):
        DistillConfig(decode_on="gpu")
    d = student_dict(tiny_corpus, caches["float16"], tmp_path / "s", epochs=1, decode_on="host")
    train_student.run(build_dataclass(ExperimentConfig, d), **QUIET)
    d["distill"]["decode_on"] = "device"
    d["train"]["epochs"] = 2
    train_student.run(build_dataclass(ExperimentConfig, d), resume=True, **QUIET)
    assert [r["epoch"] for r in step_records(tmp_path / "s")][-1] == 2


def test_default_decodes_on_the_host_on_a_cpu(caches, tiny_corpus, tmp_path):
    lines = []
    d = student_dict(tiny_corpus, caches["float16"], tmp_path / "s", epochs=1)
    train_student.run(build_dataclass(ExperimentConfig, d), log=lines.append)
    assert any("cached targets decoded on the host (distill.decode_on auto)" in ln for ln in lines)
    assert np.isfinite([r["train/total"] for r in step_records(tmp_path / "s")]).all()


@pytest.mark.parametrize("name", ["float32", "topk-uniform+int8", COMPACT, "topk-prior+lowrank-int8"])
def test_dump_encoding_on_device_stores_what_the_host_stores(tiny_teacher, tiny_corpus, tmp_path, name):
    paths = {}
    for where in ("host", "device"):
        paths[where] = tmp_path / f"{where}.zarr"
        dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, paths[where], splits=["train", "dev"],
                                  codecs=CODECS[name], encode_on=where), **QUIET)
    host, dev = TeacherCache(str(paths["host"])), TeacherCache(str(paths["device"]))   # both open: checksums sealed
    assert host.meta.identity_sha256 == dev.meta.identity_sha256
    assert dev.meta.dump_config["encode_on"] == "device"
    exact = name in ("float32", "topk-uniform+int8")
    for split in ("train", "dev"):
        a, b = host.split(split), dev.split(split)
        ra, rb = a.read_raw(0, len(a)), b.read_raw(0, len(b))
        for k in ra:
            assert ra[k].dtype == rb[k].dtype and ra[k].shape == rb[k].shape, k
            if exact:                 # the same float32 arithmetic: the same bytes
                np.testing.assert_array_equal(ra[k], rb[k], err_msg=k)
            elif ra[k].dtype.kind in "iu":    # codes: all but a few the same (a product rounded across a step)
                assert (ra[k] != rb[k]).mean() < 0.01, k
        for x, y in zip(a.read_range(0, len(a)), b.read_range(0, len(b))):
            np.testing.assert_array_equal(x["best_path"], y["best_path"])
            np.testing.assert_allclose(np.exp(x["log_probs"]), np.exp(y["log_probs"]), atol=2e-3)
            for L in x["hidden"]:
                np.testing.assert_allclose(x["hidden"][L], y["hidden"][L], atol=0.05 * np.abs(x["hidden"][L]).max())
    report = verify_cache(str(paths["device"]), log=lambda *_: None)
    assert report["ok"], report


def test_encode_on_is_validated(tiny_teacher, tiny_corpus, tmp_path):
    with pytest.raises(OfflineKDError, match="dump.encode_on must be auto, host or device, got 'gpu'"):
        dump_cfg(tiny_teacher, tiny_corpus, tmp_path / "c.zarr", encode_on="gpu")
    assert DumpConfig().encode_on == "auto"


def test_codes_sent_to_the_device_are_checked_like_decoded_reads(caches, tiny_corpus):
    """The encoded path checks every utterance's stored bytes against the dump's checksum, as read_range does."""
    cache = TeacherCache(str(caches[COMPACT]))
    split = cache.split("train")
    corpus = Corpus(tiny_corpus)
    reader = corpus.split("train")
    victim = reader.utterance_ids[5]
    split.checksums = split.checksums.copy()
    split.checksums[split.position[victim]] ^= 1  # as if its stored bytes had changed
    coded = DistillBatchDataset(reader, corpus.vocab, split, layers={1, 3}, encoded=True)
    coded[[0, 1]]                                 # other utterances still read
    with pytest.raises(OfflineKDError, match=f"utterance {victim}: the stored bytes"):
        coded[[4, 5, 6]]
