"""Dense codecs: every value stored, as float32 (exact), float16 (|error| <= 2^-11 |x|) or, for hidden states,
int8 with a per-frame symmetric scale (|error| <= scale / 2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from offline_kd.cache.codecs.base import CodecBase, FieldArray, int8_encode, int8_encode_torch
from offline_kd.cache.codecs.registry import register_codec


class _Dense(CodecBase):
    """A dense per-frame vector of `width` values stored as `dtype`."""
    dtype: ClassVar[str] = "float32"

    @property
    def width(self) -> int:
        raise NotImplementedError

    def arrays(self) -> list[FieldArray]:
        return [FieldArray("", (self.width,), self.dtype)]

    def encode(self, x: np.ndarray) -> dict:
        x = np.asarray(x, dtype=np.float32)
        if self.dtype == "float16":   # clip first: values beyond fp16's range (log-probs of -inf-like) stay finite
            x = np.clip(x, -65000.0, 65000.0)
        return {"": np.ascontiguousarray(x.astype(self.dtype))}

    def decode(self, a: dict) -> np.ndarray:
        return np.asarray(a[""], dtype=np.float32)

    def decode_torch(self, a: dict, state: dict):
        return a[""].float()

    def encode_torch(self, x, state: dict) -> dict:
        return {"": x.to(getattr(torch, self.dtype))}


@dataclass(frozen=True, eq=False)
class _DenseLogProbs(_Dense):
    field: ClassVar[str] = "log_probs"
    num_classes: int

    @property
    def width(self) -> int:
        return self.num_classes


@dataclass(frozen=True, eq=False)
class _DenseHidden(_Dense):
    field: ClassVar[str] = "hidden"
    dim: int

    @property
    def width(self) -> int:
        return self.dim


@register_codec
@dataclass(frozen=True, eq=False)
class Float32LogProbs(_DenseLogProbs):
    name: ClassVar[str] = "float32"


@register_codec
@dataclass(frozen=True, eq=False)
class Float16LogProbs(_DenseLogProbs):
    name: ClassVar[str] = "float16"
    dtype: ClassVar[str] = "float16"


@register_codec
@dataclass(frozen=True, eq=False)
class Float32Hidden(_DenseHidden):
    name: ClassVar[str] = "float32"


@register_codec
@dataclass(frozen=True, eq=False)
class Float16Hidden(_DenseHidden):
    name: ClassVar[str] = "float16"
    dtype: ClassVar[str] = "float16"


@register_codec
@dataclass(frozen=True, eq=False)
class Int8Hidden(CodecBase):
    field: ClassVar[str] = "hidden"
    name: ClassVar[str] = "int8"
    dim: int

    def arrays(self) -> list[FieldArray]:
        return [FieldArray("/q", (self.dim,), "int8"), FieldArray("/scale", (), "float32")]

    def encode(self, x: np.ndarray) -> dict:
        q, scale = int8_encode(np.asarray(x, np.float32))
        return {"/q": q, "/scale": scale}

    def decode(self, a: dict) -> np.ndarray:
        return np.asarray(a["/q"], np.float32) * np.asarray(a["/scale"], np.float32)[:, None]

    def decode_torch(self, a: dict, state: dict):
        return a["/q"].float() * a["/scale"].float()[:, None]

    def encode_torch(self, x, state: dict) -> dict:
        q, scale = int8_encode_torch(x)
        return {"/q": q, "/scale": scale}
