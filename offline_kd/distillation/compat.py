"""Does a cache fit a corpus and a student? `train-student` asks before any training."""

from __future__ import annotations

import numpy as np

from offline_kd.cache.reader import TeacherCache
from offline_kd.config import ModelConfig
from offline_kd.errors import OfflineKDError


def check_cache(cache: TeacherCache, split, reader, indices: np.ndarray, vocab, model_cfg: ModelConfig,
                layer_mapping: dict[int, int]) -> None:
    """Refuse, with the reason, a cache that does not match the corpus, the vocabulary or the student."""
    meta, path = cache.meta, cache.path
    if meta.vocab_sha256 != vocab.sha256:
        raise OfflineKDError(f"{path}: the cache was made with another vocabulary than {reader.path.parent}'s "
                             f"(vocab sha256 {meta.vocab_sha256[:12]} != {vocab.sha256[:12]})")
    if meta.num_classes != model_cfg.num_classes:
        raise OfflineKDError(f"{path}: cached log-probs have {meta.num_classes} classes, "
                             f"model.num_classes is {model_cfg.num_classes}")
    if meta.subsampling != model_cfg.subsampling:
        raise OfflineKDError(f"{path}: the teacher subsamples by {meta.subsampling}, the student by "
                             f"{model_cfg.subsampling} (model.subsampling); frames would not line up")
    for s, t in layer_mapping.items():
        if t not in cache.layer_dims:
            raise OfflineKDError(f"distill.layer_mapping: teacher layer {t} is not in the cache "
                                 f"(cached layers: {sorted(cache.layer_dims)})")
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
