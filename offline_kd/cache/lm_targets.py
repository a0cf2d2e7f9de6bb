"""LM-rescored pseudo-labels: the teacher's N best hypotheses from a beam search with an n-gram LM, stored per
utterance at dump time (`dump.lm_targets`) so that the student's CTC term on untranscribed audio can learn what the
teacher says *with the LM* (distilling the LM into the student's greedy output; `distill.pseudo_labels: lm`).

The beam search reads the cached log-probs (after the dump wrote them, before the cache is sealed), so it costs no
teacher pass. Per split decoded (views: every view), in the split's dump order:

    {split}/lm_nbest_offset  int64   (N * U + 1,)  hypothesis j of utterance i: tokens [offset[i*N+j], offset[i*N+j+1])
    {split}/lm_nbest_tokens  int32   (M,)          token ids, hypotheses concatenated (an absent hypothesis is empty)
    {split}/lm_nbest_weight  float32 (U, N)        softmax of the beam scores over the N hypotheses (absent: 0)
    split attribute lm_nbest = N

The arrays are sealed with the rest of the cache (offline_kd.cache.integrity).
"""

from __future__ import annotations

import os
import time

import numpy as np

from offline_kd.errors import OfflineKDError

ARRAYS = ("lm_nbest_offset", "lm_nbest_tokens", "lm_nbest_weight")


def nbest_weights(scores: list[float], n: int) -> np.ndarray:
    """(n,) softmax of the first n beam scores (natural-log scale), 0 for hypotheses that do not exist."""
    out = np.zeros(n, dtype=np.float32)
    s = np.asarray(scores[:n], dtype=np.float64)
    if len(s):
        e = np.exp(s - s.max())
        out[:len(s)] = e / e.sum()
    return out


def load_decoder(vocab, cfg):
    """The beam decoder of `dump.lm_targets` with its KenLM model loaded; a file that is missing or does not load as
    a KenLM model is a one-line error naming the key and the file."""
    from offline_kd.decoding.beam import BeamSearchDecoder
    if not os.path.isfile(cfg.lm):
        raise OfflineKDError(f"dump.lm_targets.lm: language model file not found: {cfg.lm}")
    try:
        return BeamSearchDecoder(list(vocab.tokens), vocab.tokenizer, vocab.word_separator, cfg.lm, cfg.alpha,
                                 cfg.beta, cfg.beam_width, num_processes=cfg.num_processes or os.cpu_count() or 1)
    except (ValueError, OSError, RuntimeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise OfflineKDError(f"dump.lm_targets.lm: {msg}" + ("" if cfg.lm in msg else f" ({cfg.lm})")) from None


def check_lm_loads(vocab, cfg) -> None:
    """Load the LM of `dump.lm_targets` once and drop it: a dump checks it before the teacher runs, so a bad file
    costs no teacher pass."""
    load_decoder(vocab, cfg)


def drop_lm_targets(group) -> bool:
    """Remove a split's stored N-best (arrays and attribute); -> whether it had any."""
    had = [k for k in ARRAYS if k in group]
    for k in had:
        del group[k]
    if "lm_nbest" in group.attrs:
        del group.attrs["lm_nbest"]
        had.append("lm_nbest")
    return bool(had)


def decode_split(split, vocab, cfg, log=print) -> dict[str, np.ndarray]:
    """The N-best arrays of one cache split (a CacheSplit of the dump being finalised)."""
    dec = load_decoder(vocab, cfg)
    n, u = cfg.nbest, len(split)
    offsets, tokens, weights = [0], [], np.zeros((u, n), dtype=np.float32)
    start, step = time.perf_counter(), 256
    for lo in range(0, u, step):
        hi = min(u, lo + step)
        lps = [r["log_probs"] for r in split.read_range(lo, hi, layers=set())]
        for i, beams in enumerate(dec.decode_nbest(lps, n), start=lo):
            weights[i] = nbest_weights([s for _, s in beams], n)
            for j in range(n):
                ids = vocab.encode(beams[j][0]) if j < len(beams) and beams[j][0] else []
                tokens.extend(ids)
                offsets.append(offsets[-1] + len(ids))
    log(f"{split.name}: LM {n}-best of {u} utterances in {time.perf_counter() - start:.1f}s")
    return {"lm_nbest_offset": np.asarray(offsets, dtype=np.int64),
            "lm_nbest_tokens": np.asarray(tokens, dtype=np.int32), "lm_nbest_weight": weights}


def write_lm_targets(cache_path: str, storage_options: dict, splits: list[str], vocab, cfg, log=print) -> None:
    """Decode and store the N-best of `splits` (cache split names) of a dump whose splits are all finalised."""
    from offline_kd.cache.layout import open_group
    from offline_kd.cache.reader import TeacherCache
    cache = TeacherCache(cache_path, storage_options, require_complete=False, verify_reads=False)
    for name in splits:
        split = cache.split(name)
        arrays = decode_split(split, vocab, cfg, log)
        g = open_group(cache_path, "r+", storage_options)[name]     # (the reader's root is read-only)
        for key, arr in arrays.items():
            chunks = (max(1, min(arr.shape[0], 1 << 20)),) + arr.shape[1:]       # (an empty array: one chunk)
            a = g.create_array(key, shape=arr.shape, dtype=arr.dtype, chunks=chunks, overwrite=True)
            if arr.size:
                a[...] = arr
        g.attrs.update({"lm_nbest": int(cfg.nbest)})


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


def check_lm_targets(cfg, splits: list[str]) -> None:
    """One-line errors for a dump.lm_targets section that cannot work."""
    if not cfg.lm:
        raise OfflineKDError("dump.lm_targets.lm: give the KenLM model (ARPA or binary) to decode with")
    if not cfg.splits:
        raise OfflineKDError("dump.lm_targets.splits: name the splits to decode (e.g. [untranscribed])")
    outside = [s for s in cfg.splits if s not in splits]
    if outside:
        raise OfflineKDError(f"dump.lm_targets.splits: {outside} not in dump.splits {splits}")
