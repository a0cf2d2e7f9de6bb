"""LM-rescored pseudo-labels: the teacher's N best hypotheses from a beam search with an n-gram LM, stored per
utterance at dump time (`dump.lm_targets`) so that the student's CTC term on untranscribed audio can learn what the
teacher says *with the LM* (distilling the LM into the student's greedy output; `distill.pseudo_labels: lm`,
`lm_1best` or `auto`).

The beam search (offline_kd.distillation.pseudo_labels) reads the cached log-probs (after the dump wrote them,
before the cache is sealed), so it costs no teacher pass. This module is the storage: per split decoded (views:
every view), in the split's dump order:

    {split}/lm_nbest_offset  int64   (N * U + 1,)  hypothesis j of utterance i: tokens [offset[i*N+j], offset[i*N+j+1])
    {split}/lm_nbest_tokens  int32   (M,)          token ids, hypotheses concatenated (an absent hypothesis is empty)
    {split}/lm_nbest_weight  float32 (U, N)        softmax of the beam scores over the N hypotheses (absent: 0)
    split attribute lm_nbest = N

They are one record array (offline_kd.cache.records), sealed with the rest of the cache (offline_kd.cache.integrity).
"""

from __future__ import annotations

import numpy as np

from offline_kd.cache.records import RecordArray, RecordReader
from offline_kd.config import check_lm_targets  # noqa: F401  (re-exported)

#: the LM N-best as a record array (cache/records.py): per utterance N weighted token-id hypotheses
LM_NBEST = RecordArray("lm_nbest", values="tokens", dtype="int32")
ARRAYS = LM_NBEST.arrays


def nbest_weights(scores: list[float], n: int) -> np.ndarray:
    """(n,) softmax of the first n beam scores (natural-log scale), 0 for hypotheses that do not exist."""
    out = np.zeros(n, dtype=np.float32)
    s = np.asarray(scores[:n], dtype=np.float64)
    if len(s):
        e = np.exp(s - s.max())
        out[:len(s)] = e / e.sum()
    return out


def drop_lm_targets(group) -> bool:
    """Remove a split's stored N-best (arrays and attribute); -> whether it had any."""
    return LM_NBEST.drop(group)


def store_lm_targets(group, arrays: dict[str, np.ndarray], nbest: int) -> None:
    """Write one split's N-best arrays (`decode_split`'s output) into its group (opened for writing)."""
    LM_NBEST.write(group, arrays, nbest)


def NBest(group) -> RecordReader:
    """The stored N-best of one cache split, in memory: `get(position)` -> [(token ids, weight), ...] (the
    hypotheses with weight > 0)."""
    return LM_NBEST.reader(group)
