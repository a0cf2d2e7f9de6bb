"""Per-utterance record arrays (cache/records.py): any record type round-trips, absent slots read as nothing, the
LM N-best is one instance with its documented array names."""

from __future__ import annotations

import numpy as np
import zarr

from offline_kd.cache.lm_targets import LM_NBEST
from offline_kd.cache.records import RecordArray


def test_a_record_type_round_trips_and_drops(tmp_path):
    rec = RecordArray("labels_from_elsewhere", values="tokens", dtype="int32")
    g = zarr.open_group(str(tmp_path / "c.zarr"), mode="w").create_group("train")
    slots = [[[1, 2, 3], [4]], [[5]], []]                 # utterance 1 has one slot, utterance 2 none
    weights = np.array([[0.75, 0.25], [1.0, 0.0], [0.0, 0.0]], dtype=np.float32)
    arrays = rec.build(slots, weights)
    assert arrays["labels_from_elsewhere_offset"].tolist() == [0, 3, 4, 5, 5, 5, 5]
    rec.write(g, arrays, slots=2)
    assert rec.present(g) and int(g.attrs["labels_from_elsewhere"]) == 2
    r = rec.reader(g)
    got = [[(v.tolist(), w) for v, w in r.get(i)] for i in range(3)]
    assert got == [[([1, 2, 3], 0.75), ([4], 0.25)], [([5], 1.0)], []]
    assert rec.drop(g) and not rec.present(g) and "labels_from_elsewhere_offset" not in g
    assert not rec.drop(g)


def test_the_lm_nbest_is_a_record_array_with_its_documented_names():
    assert LM_NBEST.arrays == ("lm_nbest_offset", "lm_nbest_tokens", "lm_nbest_weight")
    arrays = LM_NBEST.build([[[], [7, 8]]], np.array([[0.5, 0.5]], dtype=np.float32))
    assert arrays["lm_nbest_tokens"].dtype == np.int32 and arrays["lm_nbest_offset"].tolist() == [0, 0, 2]


def test_stored_dtypes_are_the_format_s_whatever_the_input_and_a_rewrite_replaces(tmp_path):
    rec = RecordArray("r", values="tokens", dtype="int32")
    arrays = rec.build([[np.array([1, 2], dtype=np.int64)]], np.array([[1.0]], dtype=np.float64))
    assert [arrays[k].dtype for k in rec.arrays] == [np.int64, np.int32, np.float32]
    empty = rec.build([], np.zeros((0, 3)))                     # a split without utterances
    assert empty["r_offset"].tolist() == [0] and empty["r_tokens"].dtype == np.int32 and empty["r_tokens"].size == 0
    g = zarr.open_group(str(tmp_path / "c.zarr"), mode="w").create_group("dev")
    rec.write(g, arrays, slots=1)
    rec.write(g, rec.build([[[7]]], np.array([[1.0]])), slots=1)     # the N-best stage redone: replaced
    assert [(v.tolist(), w) for v, w in rec.reader(g).get(0)] == [([7], 1.0)]
    rec.write(g, empty, slots=3)
    assert rec.reader(g).n == 3 and g["r_tokens"].shape == (0,)
