"""LM-rescored pseudo-labels: the teacher's N best hypotheses from a beam search with an n-gram LM, stored per
utterance at dump time (`dump.lm_targets`) so that the student's CTC term on untranscribed audio can learn what the
teacher says *with the LM* (distilling the LM into the student's greedy output; `distill.pseudo_labels: lm`).

The beam search (offline_kd.distillation.pseudo_labels) reads the cached log-probs (after the dump wrote them,
before the cache is sealed), so it costs no teacher pass. This module is the storage: per split decoded (views:
every view), in the split's dump order:

    {split}/lm_nbest_offset  int64   (N * U + 1,)  hypothesis j of utterance i: tokens [offset[i*N+j], offset[i*N+j+1])
    {split}/lm_nbest_tokens  int32   (M,)          token ids, hypotheses concatenated (an absent hypothesis is empty)
    {split}/lm_nbest_weight  float32 (U, N)        softmax of the beam scores over the N hypotheses (absent: 0)
    split attribute lm_nbest = N

The arrays are sealed with the rest of the cache (offline_kd.cache.integrity).
"""

from __future__ import annotations

import numpy as np

from offline_kd.config import check_lm_targets  # noqa: F401  (re-exported)

ARRAYS = ("lm_nbest_offset", "lm_nbest_tokens", "lm_nbest_weight")


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
    had = [k for k in ARRAYS if k in group]
    for k in had:
        del group[k]
    if "lm_nbest" in group.attrs:
        del group.attrs["lm_nbest"]
        had.append("lm_nbest")
    return bool(had)


def store_lm_targets(group, arrays: dict[str, np.ndarray], nbest: int) -> None:
    """Write one split's N-best arrays (`decode_split`'s output) into its group (opened for writing)."""
    for key, arr in arrays.items():
        chunks = (max(1, min(arr.shape[0], 1 << 20)),) + arr.shape[1:]       # (an empty array: one chunk)
        a = group.create_array(key, shape=arr.shape, dtype=arr.dtype, chunks=chunks, overwrite=True)
        if arr.size:
            a[...] = arr
    group.attrs.update({"lm_nbest": int(nbest)})


class NBest:
    """The stored N-best of one cache split, in memory: `get(position)` -> [(token ids, weight), ...] (the
    hypotheses with weight > 0)."""

    def __init__(self, group):
        if "lm_nbest_offset" not in group:
            raise KeyError(group.basename)
        self.n = int(group.attrs["lm_nbest"])
        self.offset = group["lm_nbest_offset"][:]
        self.tokens = group["lm_nbest_tokens"][:]
        self.weight = group["lm_nbest_weight"][:]

    def get(self, position: int) -> list[tuple[np.ndarray, float]]:
        out = []
        for j in range(self.n):
            w = float(self.weight[position, j])
            if w > 0:
                k = position * self.n + j
                out.append((self.tokens[self.offset[k]:self.offset[k + 1]].astype(np.int64), w))
        return out
