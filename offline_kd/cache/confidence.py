"""The teacher's confidence in its 1-best, per utterance, stored at dump time:

    {split}/confidence  float32 (U,)  in the split's dump order

`confidence` = the mean, over the frames whose greedy token is not blank, of the teacher's posterior of that token
(temperature 1); over all frames (the blank's posterior) when every frame is blank. It is computed from the cached
log-probs (decoded, as the student sees them) after the splits are written and before the cache is sealed, so it
costs no teacher pass and is sealed with the rest of the cache (offline_kd.cache.integrity). A cache dumped before
it existed has none (`read` gives None). `train-student` filters or weights untranscribed utterances by it
(`distill.min_confidence`, `distill.confidence_weighting`); `cache info` prints its distribution;
`benchmarks/pseudo_label_quality.py` shows how it tracks the 1-best's true error.

An ensemble's cache (teachers/ensemble.py) also stores each member's confidence in the same 1-best,

    {split}/member_confidence  float32 (U, N)  N: the ensemble's teachers, in `dump.teacher`'s order

by the same rule, from the per-frame field `member_probs` (each member's posterior of the cached greedy token).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from offline_kd.cache.fields import BEST_PATH

NAME = "confidence"
MEMBERS = "member_confidence"
MEMBER_PROBS = "member_probs"
BLOCK_FRAMES = 1 << 17        # frames decoded at a time


def utterance_confidence(log_probs: np.ndarray, best_path: np.ndarray) -> float:
    """(F, V) log-probs and their (F,) argmax path -> the mean posterior of the greedy token over non-blank frames
    (all frames when none is non-blank); 0 for an empty utterance."""
    if len(best_path) == 0:
        return 0.0
    return path_confidence(np.take_along_axis(log_probs, np.asarray(best_path, np.int64)[:, None], 1)[:, 0],
                           best_path)


def path_confidence(path_log_probs: np.ndarray, best_path: np.ndarray) -> float:
    """(F,) log-probs of the argmax path's tokens -> `utterance_confidence`."""
    if len(best_path) == 0:
        return 0.0
    p = np.exp(np.asarray(path_log_probs, np.float64))
    spoken = np.asarray(best_path) != 0
    return float(p[spoken].mean() if spoken.any() else p.mean())


def compute(group, fields, offsets: np.ndarray) -> np.ndarray:
    """Every utterance's confidence, from a written split's stored log-probs and best path (read in blocks)."""
    paths = [p for p, *_ in fields.log_probs.arrays()] + [BEST_PATH]
    arrays = {p: group[p] for p in paths}
    out = np.zeros(len(offsets) - 1, dtype=np.float32)
    for lo, hi, a, b in _blocks(offsets):
        raw = {p: arr[a:b] for p, arr in arrays.items()}
        best = np.asarray(raw[BEST_PATH], np.int64)
        lp = fields.log_probs.codec.gather(fields.log_probs.part(raw), best)     # (F,): the 1-best's log-probs
        for i in range(lo, hi):
            s, e = int(offsets[i]) - a, int(offsets[i + 1]) - a
            out[i] = path_confidence(lp[s:e], best[s:e])
    return out


def _blocks(offsets: np.ndarray):
    """(first utterance, end utterance, first frame, end frame) of consecutive utterances of at most BLOCK_FRAMES
    frames together (at least one utterance each)."""
    n, lo = len(offsets) - 1, 0
    while lo < n:
        hi = lo + 1
        while hi < n and offsets[hi + 1] - offsets[lo] <= BLOCK_FRAMES:
            hi += 1
        yield lo, hi, int(offsets[lo]), int(offsets[hi])
        lo = hi


def compute_members(group, offsets: np.ndarray) -> Optional[np.ndarray]:
    """(U, N) each ensemble member's confidence in every utterance's stored 1-best, from the split's
    `member_probs` field; None for a cache of one teacher."""
    if MEMBER_PROBS not in group:
        return None
    probs, best = group[MEMBER_PROBS], group[BEST_PATH]
    out = np.zeros((len(offsets) - 1, probs.shape[1]), dtype=np.float32)
    for lo, hi, a, b in _blocks(offsets):
        p, bp = np.asarray(probs[a:b], np.float64), np.asarray(best[a:b])
        for i in range(lo, hi):
            s, e = int(offsets[i]) - a, int(offsets[i + 1]) - a
            if e > s:
                spoken = bp[s:e] != 0
                out[i] = (p[s:e][spoken] if spoken.any() else p[s:e]).mean(0)
    return out


def store(group, values: np.ndarray, name: str = NAME) -> None:
    """Write (or rewrite: a dump finalised again after a kill) a split's confidences (`name`: MEMBERS for the
    members' (U, N))."""
    if name in group:
        del group[name]
    arr = group.create_array(name, shape=values.shape, dtype="float32", chunks=(max(1, len(values)),)
                             + tuple(values.shape[1:]))
    arr[...] = values.astype(np.float32)


def read(group, name: str = NAME) -> Optional[np.ndarray]:
    return group[name][...].astype(np.float32) if name in group else None


def summary(values: np.ndarray) -> dict:
    """Quantiles of a split's confidences (cache info)."""
    q = np.quantile(values, [0.1, 0.25, 0.5, 0.75, 0.9]) if len(values) else np.zeros(5)
    return {"mean": float(values.mean()) if len(values) else 0.0,
            **{k: float(v) for k, v in zip(("p10", "p25", "p50", "p75", "p90"), q)}}
