"""Numerics of a forward pass: exact mode for the teacher, mixed precision for training.

* `exact_numerics()`: the teacher's forward pass (dump-teacher, `cache verify --teacher`, the online teacher of
  `train-student --online-teacher`) runs with TF32 off and cuDNN's deterministic kernels, so the cached targets
  and a live teacher compute the same float32 function on a GPU (on a CPU the flags change nothing). The flags are
  set around each forward call and restored after it, so a student trained in the same process keeps TF32.
* `train.precision` (`fp32 | bf16 | fp16`): the model's forward pass runs under `torch.autocast`; its outputs
  (log-probs and hidden states) are cast back to float32, so every loss term is computed in float32 as before.
  fp16 needs a CUDA device (a gradient scaler guards its small gradients); bf16 runs on CPU and GPU.
* `dump.precision`: the same for the teacher's forward pass in `dump-teacher` (the cached values are then what the
  codec makes of the float32-cast outputs); `cache verify --teacher` recomputes in the cache's precision. An
  online teacher runs in float32, so offline == online is exact for float32 dumps only.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch

from offline_kd.errors import OfflineKDError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@contextlib.contextmanager
def exact_numerics():
    cuda, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (cuda.allow_tf32, cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark)
    cuda.allow_tf32, cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark = False, False, True, False
    try:
        yield
    finally:
        cuda.allow_tf32, cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark = saved


def check_precision(precision: str, device: torch.device, key: str = "train.precision") -> Optional[torch.dtype]:
    """The autocast dtype of `precision` on `device` (None: float32), or a one-line error naming `key`."""
    if precision not in PRECISIONS:
        raise OfflineKDError(f"{key} must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise OfflineKDError(f"{key} fp16 needs a CUDA device (this run is on {device.type}); use bf16 or fp32")
    return PRECISIONS[precision]


class AutocastModel:
    """A model's two entry points (`__call__`, `forward_with_hidden_states`) under autocast, outputs in float32.
    Everything else (parameters, train/eval, config) is the wrapped model's."""

    def __init__(self, model, dtype: torch.dtype, device_type: str):
        self.model, self.dtype, self.device_type = model, dtype, device_type

    def _autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype)

    def __call__(self, x, lengths):
        with self._autocast():
            log_probs, out_len = self.model(x, lengths)
        return log_probs.float(), out_len

    def forward_with_hidden_states(self, x, lengths, return_layer_indices=None, **kwargs):
        with self._autocast():
            log_probs, out_len, hidden = self.model.forward_with_hidden_states(x, lengths, return_layer_indices,
                                                                               **kwargs)
        return log_probs.float(), out_len, {k: h.float() for k, h in hidden.items()}

    def _forward_batch(self, batch: dict, device, layers=None):
        """A model with a `forward_batch` of its own (an ensemble of teachers) under autocast, outputs in float32."""
        with self._autocast():
            log_probs, out_len, hidden = self.model.forward_batch(batch, device, layers)
        return log_probs.float(), out_len, {k: h.float() for k, h in hidden.items()}

    def __getattr__(self, name):
        if name == "forward_batch" and callable(getattr(self.model, "forward_batch", None)):
            return self._forward_batch          # (only a model with one has one)
        return getattr(self.model, name)


def with_precision(model, precision: str, device: torch.device, key: str = "train.precision"):
    dtype = check_precision(precision, device, key)
    return model if dtype is None else AutocastModel(model, dtype, device.type)


def grad_scaler(precision: str, device: torch.device):
    """A gradient scaler for fp16 on CUDA; None otherwise (bf16 keeps float32's range)."""
    if precision == "fp16" and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None
