"""Does a cache fit a corpus and a student? `train-student` asks before any training."""

from __future__ import annotations

import numpy as np

from offline_kd.cache.reader import TeacherCache
from offline_kd.config import ModelConfig
from offline_kd.errors import OfflineKDError


def _suggest(mapping: dict[int, int], cached: list[int]) -> str:
    """A mapping of the same student layers onto the cached teacher layers, in order (the last one repeated)."""
    students = sorted(mapping)
    pairs = {s: cached[min(i, len(cached) - 1)] for i, s in enumerate(students)} if cached else {}
    return "{" + ", ".join(f"{s}: {t}" for s, t in pairs.items()) + "}"


def check_cache(cache: TeacherCache, split, reader, indices: np.ndarray, vocab, model_cfg: ModelConfig,
                layer_mapping: dict[int, int]) -> None:
    """Refuse, with the reason, a cache that does not match the corpus, the vocabulary or the student."""
    meta, path = cache.meta, cache.path
    if meta.vocab_sha256 != vocab.sha256:
        raise OfflineKDError(f"{path}: the cache was made with another vocabulary than {reader.path.parent}'s "
                             f"(vocab sha256 {meta.vocab_sha256[:12]} != {vocab.sha256[:12]}); dump the teacher "
                             f"again on this corpus (dump.corpus={reader.path.parent}), or set data.corpus to "
                             f"{meta.corpus}, the corpus the cache was made from")
    if meta.num_classes != model_cfg.num_classes:
        raise OfflineKDError(f"{path}: cached log-probs have {meta.num_classes} classes, "
                             f"model.num_classes is {model_cfg.num_classes}; set model.num_classes={meta.num_classes}")
    if meta.subsampling != model_cfg.subsampling:
        raise OfflineKDError(f"{path}: the cache holds the teacher's outputs every {meta.subsampling} feature frames, "
                             f"the student outputs every {model_cfg.subsampling} (model.subsampling); frames would "
                             f"not line up: set model.subsampling={meta.subsampling}, or dump a cache at the "
                             f"student's rate (dump.subsampling={model_cfg.subsampling})")
    for s, t in layer_mapping.items():
        if t not in cache.layer_dims:
            raise OfflineKDError(f"distill.layer_mapping: teacher layer {t} is not in the cache (cached layers: "
                                 f"{sorted(cache.layer_dims)}); map the student's layers onto cached ones, e.g. "
                                 f"distill.layer_mapping={_suggest(layer_mapping, sorted(cache.layer_dims))}, or "
                                 f"set distill.gamma=0 (no feature term)")
        if not 1 <= s <= model_cfg.num_layers:
            raise OfflineKDError(f"distill.layer_mapping: student layer {s} out of range 1..{model_cfg.num_layers}")
    missing, changed, frames = [], [], []
    hashes = reader.all_feature_hashes()
    for i in indices:
        u = reader.utterance_ids[i]
        p = split.position.get(u)
        if p is None:
            missing.append(u)
            continue
        if split.feature_hashes[p] != hashes[i]:
            changed.append(u)
        if split.input_frames[p] != reader.lengths[i]:
            frames.append(u)
    for what, ids in (("not in the cache", missing), ("features differ from the cached ones (feature_sha256)",
                                                      changed), ("frame count differs from the cache", frames)):
        if ids:
            raise OfflineKDError(f"{path} does not match {reader.path}: {len(ids)} utterance(s) {what}: "
                                 f"{', '.join(ids[:8])}{' ...' if len(ids) > 8 else ''}")
