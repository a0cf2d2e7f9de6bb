"""The sampled log-prob codec: unbiased sparse targets."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from offline_kd.cache.codecs.base import CodecBase, FieldArray, index_dtype
from offline_kd.cache.codecs.registry import register_codec
from offline_kd.errors import OfflineKDError


@register_codec
@dataclass(frozen=True, eq=False)
class SampledLogProbs(CodecBase):
    """Sparse Logit Sampling (Anshumann et al., 2025): per frame `samples` tokens drawn from the teacher's
    distribution, stored as the distinct tokens and their counts. counts / samples is an unbiased estimate of the
    teacher distribution; its support is the drawn tokens only (-inf elsewhere). Draws are seeded by the frames'
    own bytes, so a dump is reproducible and resumes to the same bytes."""
    field: ClassVar[str] = "log_probs"
    name: ClassVar[str] = "sampled"
    num_classes: int
    samples: int = 32
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.samples <= 255:
            raise OfflineKDError(f"codecs.sampled_n must be in 1..255, got {self.samples}")

    def arrays(self) -> list[FieldArray]:
        return [FieldArray("/indices", (self.samples,), index_dtype(self.num_classes)), FieldArray("/counts", (self.samples,), "uint8")]

    def encode(self, x: np.ndarray) -> dict:
        x = np.asarray(x, np.float32)
        f, v, n = x.shape[0], self.num_classes, self.samples
        p = np.exp(x.astype(np.float64))
        cdf = np.cumsum(p, axis=1)
        cdf /= cdf[:, -1:]
        rng = np.random.default_rng([self.seed, zlib.crc32(x.tobytes())])
        rows = np.arange(f)[:, None]
        # one searchsorted for all frames: row r's cdf lies in [r, r + 1]
        pos = np.searchsorted((cdf + rows).ravel(), (rng.random((f, n)) + rows).ravel(), side="right")
        drawn = np.minimum(pos.reshape(f, n) - rows * v, v - 1)
        keys, counts = np.unique((rows * v + drawn).ravel(), return_counts=True)
        krow = keys // v
        slot = np.arange(len(keys)) - np.searchsorted(krow, krow, side="left")
        indices = np.zeros((f, n), dtype=self.arrays()[0].dtype)
        cnt = np.zeros((f, n), dtype=np.uint8)
        indices[krow, slot] = keys % v
        cnt[krow, slot] = counts
        return {"/indices": indices, "/counts": cnt}

    def decode(self, a: dict) -> np.ndarray:
        indices, counts = np.asarray(a["/indices"], np.int64), np.asarray(a["/counts"], np.float32)
        dense = np.full((indices.shape[0], self.num_classes), -np.inf, dtype=np.float32)
        used = counts > 0
        rows = np.broadcast_to(np.arange(indices.shape[0])[:, None], indices.shape)
        dense[rows[used], indices[used]] = np.log(counts[used] / self.samples)
        return dense
