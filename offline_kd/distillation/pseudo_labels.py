"""LM-rescored pseudo-labels at dump time (`dump.lm_targets`): a pyctcdecode + KenLM beam search over the cached
log-probs gives each utterance's N best hypotheses, stored by `offline_kd.cache.lm_targets` (the format is
described there) and trained on with `distill.pseudo_labels: lm` (all N, by posterior), `lm_1best` (the best alone) or
`auto` (the LM's labels wherever a cache holds them)."""

from __future__ import annotations

import os
import time

import numpy as np

from offline_kd.cache.layout import open_group
from offline_kd.cache.lm_targets import LM_NBEST, nbest_weights, store_lm_targets
from offline_kd.cache.reader import TeacherCache
from offline_kd.decoding.beam import BeamSearchDecoder
from offline_kd.errors import OfflineKDError


def load_decoder(vocab, cfg):
    """The beam decoder of `dump.lm_targets` with its KenLM model loaded; a file that is missing or does not load as
    a KenLM model is a one-line error naming the key and the file."""
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


def decode_split(split, vocab, cfg, log=print) -> dict[str, np.ndarray]:
    """The N-best arrays of one cache split (a CacheSplit of the dump being finalised)."""
    dec = load_decoder(vocab, cfg)
    n, u = cfg.nbest, len(split)
    slots, weights = [], np.zeros((u, n), dtype=np.float32)
    start, step = time.perf_counter(), 256
    for lo in range(0, u, step):
        hi = min(u, lo + step)
        lps = [r["log_probs"] for r in split.read_range(lo, hi, layers=set())]
        for i, beams in enumerate(dec.decode_nbest(lps, n), start=lo):
            weights[i] = nbest_weights([s for _, s in beams], n)
            slots.append([vocab.encode(text) if text else [] for text, _ in beams[:n]])
    log(f"{split.name}: LM {n}-best of {u} utterances in {time.perf_counter() - start:.1f}s")
    return LM_NBEST.build(slots, weights)


def write_lm_targets(cache_path: str, storage_options: dict, splits: list[str], vocab, cfg, log=print) -> None:
    """Decode and store the N-best of `splits` (cache split names) of a dump whose splits are all finalised."""
    cache = TeacherCache(cache_path, storage_options, require_complete=False, verify_reads=False)
    for name in splits:
        split = cache.split(name)
        if split.has_lm_nbest:          # stored by the dump this one extends (a changed setting drops them first)
            continue
        arrays = decode_split(split, vocab, cfg, log)
        g = open_group(cache_path, "r+", storage_options)[name]     # (the reader's root is read-only)
        store_lm_targets(g, arrays, cfg.nbest)
