"""The codec contract. A codec turns one field of a batch of frames (log-probs `(F, V)` or one layer's hidden states
`(F, D)`, float32) into named per-frame arrays (`encode`) and back (`decode`). Its spec (`to_dict`: name and
settings) is stored in the cache's metadata, so a reader never needs settings retyped; fitted state (a PCA basis,
a prior) is stored as cache arrays at the paths the codec names (`state_paths`). Every registered codec passes
tests/test_codec_conformance.py.

Adding a codec: a new file in this package with a frozen dataclass deriving from `CodecBase`, decorated with
`@register_codec`, imported in `__init__.py`. Nothing else changes: the dump fits it, the writer stores its
arrays, the reader rebuilds it from its spec and state.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch


@dataclass(frozen=True)
class FieldArray:
    """One stored per-frame array: name suffix, per-frame shape, numpy dtype, and whether chunks are stored
    component-major (transposed) for the compressor."""
    suffix: str
    shape: tuple
    dtype: str
    transpose: bool = False


class CodecBase:
    """Defaults of the contract; a codec overrides what it has.

    field         "log_probs" or "hidden": the kind of values it encodes
    name          its name in configs and in the stored spec
    arrays()      the per-frame arrays it writes (FieldArray), encode() returns exactly these suffixes
    encode(x)     (F, W) float32 -> {suffix: (F, ...) array}
    decode(a)     {suffix: array} -> (F, W) float32 (log-probs: a normalised distribution, -inf allowed)
    device_state(device)  the fitted state as tensors on a torch device (built once per device by the caller)
    encode_torch(x, state)  encode() for a (F, W) float32 tensor on that device: the dump encodes where the
                  teacher ran and copies only the codes to the host (any integer dtype; the writer casts to
                  the declared one). The default encodes on the host with numpy.
    decode_torch(a, state)  decode() for torch tensors already on that device, with that state: the stored codes
                  travel to the training device and the values are rebuilt there. The default decodes on the host
                  with numpy and moves the result back; codecs whose decoding is matrix work override it.
    to_dict()     the spec stored in the cache; from_dict(spec) rebuilds the codec (without fitted state)
    gather(a, tokens)  log-probs only: {suffix: array}, (F,) token ids -> (F,) float32 the decoded log-prob of
                  each frame's token, equal to decode(a)[f, tokens[f]]; the default decodes, a codec that stores
                  some entries exactly (top-k) reads them without decoding the rest
    fit(sample)   -> a new codec with its state fitted on a (N, W) sample (the codec itself when it has none)
    fit_required  True while state it needs is missing
    state()       {key: array} of the fitted state; with_state(state) -> a new codec carrying it
    state_paths(field_path)  {key: cache array path} of every state key it may have (old caches may lack some)
    """

    field: ClassVar[str] = ""
    name: ClassVar[str] = ""
    state_keys: ClassVar[tuple] = ()

    @classmethod
    def from_dict(cls, spec: dict) -> "CodecBase":
        return cls(**spec)

    def to_dict(self) -> dict:
        return {"name": self.name, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                      if f.name not in self.state_keys}}

    @property
    def fit_required(self) -> bool:
        return False

    @property
    def fit_frames_needed(self) -> int:
        """The fewest frames a fit needs (a rank-r basis needs r)."""
        return 0

    def fit(self, sample: np.ndarray) -> "CodecBase":
        return self

    def state(self) -> dict[str, np.ndarray]:
        return {}

    def device_state(self, device) -> dict:
        return {}

    def encode_torch(self, x, state: dict) -> dict:
        return {k: torch.from_numpy(v) for k, v in self.encode(x.float().cpu().numpy()).items()}

    def decode_torch(self, a: dict, state: dict):
        device = next(iter(a.values())).device
        return torch.from_numpy(self.decode({k: v.cpu().numpy() for k, v in a.items()})).to(device)

    def gather(self, a: dict, tokens: np.ndarray) -> np.ndarray:
        dense = self.decode(a)
        return np.take_along_axis(dense, np.asarray(tokens, np.int64)[:, None], 1)[:, 0].astype(np.float32)

    def with_state(self, state: dict[str, np.ndarray]) -> "CodecBase":
        return self

    def state_paths(self, field_path: str) -> dict[str, str]:
        return {}

    def __eq__(self, other) -> bool:
        """Same type, spec and fitted state (arrays compared by value)."""
        if type(self) is not type(other) or self.to_dict() != other.to_dict():
            return False
        a, b = self.state(), other.state()
        return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    __hash__ = None


def logsumexp(z: np.ndarray) -> np.ndarray:
    """log(sum(exp(z))) over the last axis, (F, 1); a row of only -inf gives -inf (not nan)."""
    top = z.max(-1, keepdims=True)
    safe = np.where(np.isfinite(top), top, 0.0)
    return np.log(np.exp(z - safe).sum(-1, keepdims=True)) + safe


def int8_encode(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame symmetric int8: q = round(x / scale), scale = absmax / 127."""
    scale = np.abs(x).max(axis=1) / 127.0
    safe = np.where(scale > 0, scale, 1.0)
    q = np.clip(np.rint(x / safe[:, None]), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


def int8_encode_torch(x):
    """int8_encode for a torch tensor (the same float32 operations, so the same codes)."""
    scale = x.abs().amax(1) / 127.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round(x / safe[:, None]), -127, 127).to(torch.int8)
    return q, scale


def index_dtype(num_classes: int) -> str:
    return "uint16" if num_classes <= 65535 else "int32"
