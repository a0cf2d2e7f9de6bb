"""SpecAugment-style time and frequency masking of the input features.

Masking keeps every frame in place, so targets cached per frame still line up with the student's outputs. Speed
perturbation changes the number of frames: `train` applies it in the data (offline_kd.data.views, one speed per
batch); distillation takes it from the teacher's cached views (dump.views), never here.
"""

from __future__ import annotations

import torch

from offline_kd.config import AugmentConfig
from offline_kd.errors import OfflineKDError


class SpecAugment:
    def __init__(self, cfg: AugmentConfig, allow_frame_change: bool):
        if cfg.speed_perturb and not allow_frame_change:
            raise OfflineKDError("augment.speed_perturb changes the number of frames, so the cached teacher targets "
                                 "would no longer line up with the student's outputs; cache the teacher on "
                                 "speed-perturbed views instead (dump.views: [{speed: 0.9}, {speed: 1.0}, "
                                 "{speed: 1.1}], docs/views.md)")
        self.cfg = cfg

    @property
    def active(self) -> bool:
        return bool(self.cfg.time_masks or self.cfg.freq_masks)

    def __call__(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) -> masked copy (same shape). Uses the torch RNG (reproducible under the run's seed)."""
        if not self.active:
            return x
        x = x.clone()
        b, t, d = x.shape
        for i in range(b):
            n = int(lengths[i])
            for _ in range(self.cfg.freq_masks):
                w = int(torch.randint(0, self.cfg.freq_mask_width + 1, ()))
                f0 = int(torch.randint(0, max(1, d - w), ()))
                x[i, :, f0:f0 + w] = 0
            for _ in range(self.cfg.time_masks):
                w = min(int(torch.randint(0, self.cfg.time_mask_width + 1, ())), n)
                t0 = int(torch.randint(0, max(1, n - w), ()))
                x[i, t0:t0 + w, :] = 0
        return x


def refuse_feature_augment(model, cfg) -> None:
    """A model that reads waveforms (`input_kind` "waveform") sees no features: SpecAugment and speed perturbation
    of `augment` would silently do nothing, so they are refused with what masks its frames instead."""
    if getattr(model, "input_kind", "features") != "waveform":
        return
    a = cfg.augment
    used = [k for k in ("time_masks", "freq_masks", "speed_perturb") if getattr(a, k)]
    if used:
        raise OfflineKDError(f"augment.{used[0]} acts on features; model.type {cfg.model.type} reads waveforms: set "
                             f"augment.{used[0]} to 0 (or null) and mask its frames with "
                             f"model.hf_config.mask_time_prob")
