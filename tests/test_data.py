import hashlib
import json

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from helpers import tiny_spec
from offline_kd.cli import main
from offline_kd.data.corpus import Corpus, SplitWriter, write_corpus_meta
from offline_kd.data.dataset import SpeechDataset, collate
from offline_kd.data.sampler import BucketBatchSampler, SortedRunBatchSampler
from offline_kd.data.synth import write_synth_corpus
from offline_kd.data.validate import validate_split
from offline_kd.data.vocab import BLANK, Vocabulary
from offline_kd.errors import OfflineKDError



def _digest(path):
    with h5py.File(path, "r") as f:
        return hashlib.sha256(f["features"][:].tobytes() + "|".join(f["transcripts"].asstr()[:]).encode()).hexdigest()


def test_synth_is_deterministic_and_has_seed_geometry(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_synth_corpus(a, tiny_spec(num_train=10), log=lambda *_: None)
    write_synth_corpus(b, tiny_spec(num_train=10), log=lambda *_: None)
    assert _digest(a / "train.h5") == _digest(b / "train.h5")
    c = Corpus(a)
    assert c.feature_dim == 16 and len(c.vocab) == 9
    # default geometry is the seed's: 512-dim features, 1228 units + blank
    from offline_kd.data.synth import SynthSpec, SynthCorpus
    sc = SynthCorpus(SynthSpec(num_train=1))
    assert len(sc.vocab()) == 1229 and sc.phones.shape[1] == 512


def test_synth_latent_space_and_allophones(tmp_path):
    """Phones in a latent space: every frame lies in the projection's row space (before noise); with allophones
    the variant spoken is the one the previous phone selects, and the new options leave the defaults' bytes alone."""
    from offline_kd.data.synth import SynthCorpus
    clean = dict(snr_db=(200.0, 200.0), speaker_distortion=0.0)
    sc = SynthCorpus(tiny_spec(latent_dim=4, allophones=3, allophone_spread=1.0, **clean))
    assert sc.proj.shape == (4, 16) and np.allclose(sc.proj @ sc.proj.T, np.eye(4), atol=1e-5)
    assert sc.variants.shape == (8, 3, 4) and sc.context.shape == (8, 9)
    x = sc.render(np.random.default_rng(0), [1, 2, 3], speaker=0)
    residual = x - (x @ sc.proj.T) @ sc.proj
    assert np.abs(residual).max() < 1e-3 * np.abs(x).max()
    # unit 1 after a pause: its first phone is the variant the pause context selects
    p = int(sc.spellings[1][0])
    v = sc.variants[p, sc.context[p, 8]]
    expected = (v @ sc.latent_mix[0] + sc.latent_bias[0]) @ sc.proj
    frames = [t for t in range(len(x)) if np.allclose(x[t], expected, atol=1e-3)]
    assert frames, "the first phone's pause-context variant is not in the rendered features"
    # variants differ from one another (spread 1: unrelated) and the defaults are untouched by the new options
    assert not np.allclose(sc.variants[p, 0], sc.variants[p, 1])
    a, b = tmp_path / "a", tmp_path / "b"
    write_synth_corpus(a, tiny_spec(num_train=4), log=lambda *_: None)
    write_synth_corpus(b, tiny_spec(num_train=4, latent_dim=0, allophones=1, allophone_spread=0.3),
                       log=lambda *_: None)
    assert _digest(a / "train.h5") == _digest(b / "train.h5")


@pytest.mark.parametrize("args, key", [(["--latent-dim", "600"], "--latent-dim"),
                                       (["--allophones", "0"], "--allophones"),
                                       (["--allophone-spread", "1.5"], "--allophone-spread"),
                                       (["--zipf", "-1"], "--zipf")])
def test_synth_cli_refuses_bad_options(tmp_path, args, key):
    res = CliRunner().invoke(main, ["data", "synth", "--out", str(tmp_path / "c"), "--num-train", "2", *args])
    assert res.exit_code == 1 and key in res.output and not (tmp_path / "c").exists()


def test_synth_cli_refuses_to_overwrite(tmp_path, tiny_corpus):
    res = CliRunner().invoke(main, ["data", "synth", "--out", str(tiny_corpus), "--num-train", "2"])
    assert res.exit_code == 1 and "already holds a corpus" in res.output


def _char_corpus(tmp_path, utts, feature_dim=4):
    vocab = Vocabulary((BLANK, "|", "a", "b", "c"), "char", "|")
    write_corpus_meta(tmp_path, vocab, feature_dim)
    w = SplitWriter(tmp_path / "train.h5", feature_dim)
    for uid, feats, text in utts:
        w.add(uid, feats, text)
    w.close()
    return Corpus(tmp_path)


def test_char_tokenizer_round_trip():
    v = Vocabulary((BLANK, "|", "a", "b"), "char", "|")
    assert v.encode("ab ba") == [2, 3, 1, 3, 2]
    assert v.decode([2, 3, 1, 3, 2]) == "ab ba"


def test_each_validation_error_names_the_utterance(tmp_path):
    ok = np.ones((10, 4), np.float32)
    nan = ok.copy()
    nan[3, 1] = np.nan
    c = _char_corpus(tmp_path, [("good", ok, "ab"), ("has-nan", nan, "ab"), ("empty", np.zeros((0, 4)), "a"),
                                ("oov", ok, "ax"), ("too-long", np.ones((3, 4), np.float32), "abcab")])
    r = c.split("train")
    with pytest.raises(OfflineKDError) as exc:
        validate_split(r, c.vocab, 4, 2)
    msg = str(exc.value)
    for uid, what in (("has-nan", "NaN/Inf"), ("empty", "zero-length"), ("oov", "not in the vocabulary"),
                      ("too-long", "CTC cannot align")):
        assert uid in msg and what in msg
    assert "good" not in msg
    logs = []
    valid = validate_split(r, c.vocab, 4, 2, skip_invalid=True, log=logs.append)
    assert [r.utterance_ids[i] for i in valid] == ["good"]
    assert "skipping 4 invalid" in logs[0]
    with pytest.raises(OfflineKDError, match="feature dim is 4"):
        validate_split(r, c.vocab, 8, 2)


def test_repeated_labels_need_a_blank_between():
    from offline_kd.data.validate import ctc_min_frames
    assert ctc_min_frames([1, 1, 2]) == 4 and ctc_min_frames([1, 2, 3]) == 3


def test_import_jsonl_and_tsv(tmp_path):
    feats = tmp_path / "feats"
    feats.mkdir()
    rows = []
    for i in range(4):
        np.save(feats / f"u{i}.npy", np.full((6 + i, 3), i, np.float32))
        rows.append({"id": f"u{i}", "features": f"feats/u{i}.npy", "text": "ab ba" if i % 2 else "a",
                     "split": "train" if i < 3 else "dev"})
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    res = CliRunner().invoke(main, ["data", "import", "--manifest", str(tmp_path / "m.jsonl"),
                                    "--out", str(tmp_path / "c1")])
    assert res.exit_code == 0, res.output
    c = Corpus(tmp_path / "c1")
    assert c.vocab.tokens == (BLANK, "|", "a", "b") and c.feature_dim == 3
    r = c.split("train")
    assert r.utterance_ids == ["u0", "u1", "u2"] and r.transcripts[1] == "ab ba"
    np.testing.assert_array_equal(r.features(2), np.full((8, 3), 2, np.float32))
    assert len(c.split("dev")) == 1
    (tmp_path / "m.tsv").write_text("".join(f"{r['id']}\t{r['features']}\t{r['text']}\n" for r in rows))
    res = CliRunner().invoke(main, ["data", "import", "--manifest", str(tmp_path / "m.tsv"), "--split", "all",
                                    "--out", str(tmp_path / "c2"), "--tokenizer", "word"])
    assert res.exit_code == 0, res.output
    assert Corpus(tmp_path / "c2").vocab.tokens == (BLANK, "a", "ab", "ba")


def test_import_missing_feature_file_is_one_line_error(tmp_path):
    (tmp_path / "m.tsv").write_text("u1\tnope.npy\thello\n")
    res = CliRunner().invoke(main, ["data", "import", "--manifest", str(tmp_path / "m.tsv"), "--split", "train",
                                    "--out", str(tmp_path / "c")])
    assert res.exit_code == 1 and "u1" in res.output and "not found" in res.output
    assert not (tmp_path / "c" / "train.h5").exists()


def test_bucket_sampler_bounds_and_determinism():
    lengths = np.random.default_rng(0).integers(5, 100, 200)
    idx = np.arange(200)
    s = BucketBatchSampler(lengths, idx, batch_size=8, max_frames=300, num_buckets=4, seed=1)
    s.set_epoch(3)
    b1 = s.batches()
    s2 = BucketBatchSampler(lengths, idx, batch_size=8, max_frames=300, num_buckets=4, seed=1)
    s2.set_epoch(3)
    assert b1 == s2.batches()
    s2.set_epoch(4)
    assert b1 != s2.batches()
    assert sorted(i for b in b1 for i in b) == list(range(200))
    for b in b1:
        assert len(b) <= 8
        assert len(b) == 1 or max(lengths[b]) * len(b) <= 300
        # batches come from one length bucket: similar lengths
    spread = np.mean([np.ptp(lengths[b]) for b in b1])
    assert spread < np.ptp(lengths) / 2


def test_sorted_run_sampler_batches_are_contiguous_in_dump_order():
    lengths = np.array([5, 9, 9, 3, 7, 8, 1])
    s = SortedRunBatchSampler(lengths, np.arange(7), batch_size=3, seed=0)
    order = list(np.argsort(-lengths, kind="stable"))
    for b in s.batches():
        pos = sorted(order.index(i) for i in b)
        assert pos == list(range(pos[0], pos[0] + len(pos)))


def test_collate_pads_and_returns_lengths(tiny_corpus):
    c = Corpus(tiny_corpus)
    r = c.split("train")
    ds = SpeechDataset(r, c.vocab)
    batch = collate([ds[0], ds[1]])
    assert batch["features"].shape[0] == 2
    assert batch["feature_lengths"].tolist() == [int(r.lengths[0]), int(r.lengths[1])]
    n0 = int(r.lengths[0])
    assert torch.all(batch["features"][0, n0:] == 0)
    assert batch["labels"].numel() == int(batch["label_lengths"].sum())


def test_import_removes_what_a_killed_import_left_beside_out(tmp_path):
    """#29 item 7: a killed `data import` leaves `.NAME.importing-PID` beside --out; the next import removes such
    directories whose process is gone, and leaves those of a live import alone."""
    import os
    import subprocess
    import sys
    np.save(tmp_path / "u0.npy", np.zeros((6, 3), np.float32))
    (tmp_path / "m.tsv").write_text("u0\tu0.npy\ta b\n")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale, live = tmp_path / f".c.importing-{dead.pid}", tmp_path / f".c.importing-{os.getppid()}"
    other = tmp_path / f".d.importing-{dead.pid}"          # another --out's: not this import's business
    for d in (stale, live, other):
        (d / "train.h5").parent.mkdir()
        (d / "train.h5").write_bytes(b"partial")
    res = CliRunner().invoke(main, ["data", "import", "--manifest", str(tmp_path / "m.tsv"), "--split", "train",
                                    "--out", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert len(Corpus(tmp_path / "c").split("train")) == 1
    assert not stale.exists() and live.is_dir() and other.is_dir()
