"""cache/confidence.py without a teacher: the per-utterance confidence of hand-made log-probs, read in blocks from a
zarr group, stored, rewritten and summarised (fast enough for mutation testing)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from offline_kd.cache import confidence
from offline_kd.cache.codecs import codec_from_spec
from offline_kd.cache.fields import FieldTable


def test_utterance_confidence_over_spoken_frames_or_all():
    lp = np.log(np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]], np.float32))
    assert confidence.utterance_confidence(lp, np.array([0, 1, 1])) == pytest.approx((0.8 + 0.6) / 2)
    lp0 = np.log(np.array([[0.9, 0.1], [0.7, 0.3]], np.float32))
    assert confidence.utterance_confidence(lp0, np.array([0, 0])) == pytest.approx(0.8)
    assert confidence.utterance_confidence(lp0[:0], np.array([], np.int64)) == 0.0
    assert confidence.utterance_confidence(np.log(np.array([[0.3, 0.7]])), np.array([1])) == pytest.approx(0.7)
    assert confidence.path_confidence(np.zeros(0), np.zeros(0, np.int64)) == 0.0       # an empty utterance
    assert confidence.path_confidence(np.log([0.25]), np.array([2])) == pytest.approx(0.25)


def test_compute_reads_every_utterance_in_blocks_and_store_rewrites(monkeypatch, tmp_path):
    rng = np.random.default_rng(0)
    lengths = [5, 3, 7, 1, 4]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    lp = np.log(rng.dirichlet(np.ones(4), size=int(offsets[-1])).astype(np.float32))
    best = lp.argmax(-1).astype(np.int32)
    fields = FieldTable(codec_from_spec("log_probs", {"name": "float32", "num_classes": 4}), {})
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    for path, arr in fields.encode(lp, best, {}).items():
        g.create_array(path, shape=arr.shape, dtype=arr.dtype)[...] = arr
    monkeypatch.setattr(confidence, "BLOCK_FRAMES", 6)          # several blocks, one utterance longer than a block
    got = confidence.compute(g, fields, offsets)
    want = [confidence.utterance_confidence(lp[a:b], best[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert confidence.read(g) is None
    confidence.store(g, got)
    confidence.store(g, got * 0.5)                               # a dump finalised again: rewritten
    np.testing.assert_allclose(confidence.read(g), got * 0.5, rtol=1e-6)
    s = confidence.summary(np.array([0.1, 0.2, 0.3, 0.4, 0.5], np.float32))
    assert s["mean"] == pytest.approx(0.3) and s["p50"] == pytest.approx(0.3) and s["p10"] == pytest.approx(0.14)
    assert s["p90"] == pytest.approx(0.46) and s["p25"] == pytest.approx(0.2) and s["p75"] == pytest.approx(0.4)
    assert confidence.summary(np.zeros(0, np.float32))["mean"] == 0.0


def test_each_members_confidence_in_the_stored_1best_in_blocks(monkeypatch, tmp_path):
    """An ensemble's member_probs (F, M) -> member_confidence (U, M): the mean over each utterance's spoken frames
    (all frames where every one is blank), an empty utterance 0; none without the field."""
    lengths = [3, 2, 0, 4]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    best = np.array([0, 2, 1, 0, 0, 3, 0, 3, 1], np.int32)
    probs = np.array([[.9, .1], [.6, .2], [.4, .8], [.7, .5], [.3, .1],
                      [.2, .9], [.8, .8], [.5, .7], [.6, .1]], np.float16)
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    g.create_array("best_path", shape=best.shape, dtype=best.dtype)[...] = best
    assert confidence.compute_members(g, offsets) is None
    g.create_array(confidence.MEMBER_PROBS, shape=probs.shape, dtype=probs.dtype)[...] = probs
    monkeypatch.setattr(confidence, "BLOCK_FRAMES", 4)          # several blocks, one utterance as long as a block
    got = confidence.compute_members(g, offsets)
    p = probs.astype(np.float64)
    want = [p[1:3].mean(0), p[3:5].mean(0), [0, 0], p[[5, 7, 8]].mean(0)]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got.dtype == np.float32 and got.shape == (4, 2)
    confidence.store(g, got, confidence.MEMBERS)
    confidence.store(g, got * 0.5, confidence.MEMBERS)          # rewritten, and apart from the ensemble's own
    np.testing.assert_allclose(confidence.read(g, confidence.MEMBERS), got * 0.5, rtol=1e-6)
    assert confidence.read(g) is None
