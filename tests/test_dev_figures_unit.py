"""cache/dev_figures.py without a teacher: the greedy figures of a hand-made split's stored 1-best (fast enough for
mutation testing)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from offline_kd.cache.dev_figures import greedy_figures
from offline_kd.cache.layout import encode_ids
from offline_kd.data.vocab import Vocabulary


def test_the_stored_1best_is_collapsed_decoded_and_scored_against_transcribed_utterances_only(tmp_path):
    vocab = Vocabulary(("<blank>", "a", "b", "c"))
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    ids = encode_ids(["u1", "u2", "u3"])
    g.create_array("utterance_id", shape=ids.shape, dtype=ids.dtype)[...] = ids
    # u1: a a _ b -> "a b"; u2: c _ c -> "c c"; u3: (untranscribed) b
    best = np.array([1, 1, 0, 2, 3, 0, 3, 2], np.int32)
    g.create_array("best_path", shape=best.shape, dtype=best.dtype)[...] = best
    offsets = np.array([0, 4, 7, 8], np.int64)
    g.create_array("offset", shape=offsets.shape, dtype=offsets.dtype)[...] = offsets
    got = greedy_figures(g, vocab, {"u1": "a b", "u2": "c a", "u3": " "})
    assert got["utterances"] == 2
    assert got["wer"] == pytest.approx(100 * 1 / 4) and got["cer"] > 0
    assert greedy_figures(g, vocab, {"u1": "a b", "u2": "c c"})["wer"] == 0.0
    assert greedy_figures(g, vocab, {"u3": ""}) is None
    assert greedy_figures(g, vocab, {}) is None


def test_the_dump_warns_when_the_cached_1best_is_clearly_worse_than_the_teacher_alone():
    from offline_kd.cache.dev_figures import MARGIN_POINTS, MARGIN_SHARE, warnings

    assert (MARGIN_POINTS, MARGIN_SHARE) == (2.0, 0.25)
    one = {"dev": {"wer": 4.0}}
    assert warnings(one, {"wer": 6.0}, ensemble=False) == []                # 4 + max(2, 1): within
    said = warnings(one, {"wer": 6.01}, ensemble=False)
    assert len(said) == 1 and "6.01% greedy WER where the teacher's checkpoint recorded 4.00%" in said[0]
    assert "frame alignment" in said[0]
    assert warnings({"dev": {"wer": 40.0}}, {"wer": 50.0}, ensemble=False) == []        # 40 + max(2, 10)
    assert len(warnings({"dev": {"wer": 40.0}}, {"wer": 50.01}, ensemble=False)) == 1
    assert warnings({}, {"wer": 90.0}, ensemble=False) == []                 # nothing recorded: nothing to compare
    assert warnings({"dev": {}}, {"wer": 90.0}, ensemble=False) == []
    members = {"members": [{"dev": {"wer": 5.0}}, {"dev": {"wer": 3.0}}, {}], "dev": {"wer": 1.0}}
    assert warnings(members, {"wer": 3.0}, ensemble=True) == []              # no worse than the best member
    said = warnings(members, {"wer": 3.01}, ensemble=True)
    assert len(said) == 1 and "above its best member's 3.00% (teacher 2)" in said[0]
    assert warnings({"members": [{}]}, {"wer": 50.0}, ensemble=True) == []
