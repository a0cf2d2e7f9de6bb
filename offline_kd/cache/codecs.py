"""Per-field codecs: writer/reader pairs registered by name, self-describing through `to_dict()`.

A codec turns one field of a batch of frames into named per-frame arrays (`encode`) and back (`decode`). Its spec
(name + settings, and any fitted state such as a low-rank basis, stored as cache arrays) is written into the cache,
so a reader never needs settings retyped. Every codec is exercised by the same round-trip test with its error bound.

Log-prob codecs (input `(F, V)` float32 log-probabilities at temperature 1):
  float32   exact
  float16   |error| <= 2^-11 * |x| (fp16 rounding)
  topk      per frame the k largest log-probs (fp16) with their token ids and the log of the remaining tail mass;
            `coverage` makes k per frame the smallest that reaches that probability mass (capped at `k`).
            Decoding spreads the tail mass over the V - k tokens that were not kept, so the dense distribution
            sums to 1 (the documented approximation; see docs/cache-format.md): uniformly (`tail: uniform`),
            in proportion to the teacher's mean distribution fitted at dump time and stored in the cache
            (`tail: prior`), or shaped per frame by the `lowrank` codec's reconstruction of the logits
            (`tail: lowrank`: the head exact, the tail's total exact, its shape from `tail_rank` coefficients).
  sampled   Sparse Logit Sampling (Anshumann et al., 2025): per frame `samples` tokens drawn from the teacher's
            distribution, stored as the distinct tokens and their counts. The decoded target counts / samples is
            an unbiased estimate of the teacher distribution (its expectation is exactly p), so the soft-KD
            gradient at T = 1 is unbiased, unlike top-k; its support is the drawn tokens only (log-prob -inf
            elsewhere). Draws are seeded by the frames' own bytes, so a dump is reproducible.
  lowrank   the logits (log-probs centred per frame) as `rank` coefficients on a PCA basis fitted at dump time
            (int8 whitened or fp16); decoding is log-softmax(mean + coeffs @ basis), a normalised distribution
            with full support whose error is measured, not bounded (KL per frame in docs/benchmarks.md).
Hidden-state codecs (input `(F, D)` float32):
  float32, float16
  int8      per-frame symmetric scale (absmax / 127), |error| <= scale / 2
  lowrank   x ~ mean + coeffs @ basis, basis (r, D) fitted by PCA on a sample of frames; coeffs fp16, int8
            (whitened by each component's standard deviation, then one absmax scale per frame), or `step`: one
            uniform quantiser step for all components, fitted for a target relative error, int8 codes stored
            component-major so zstd entropy-codes each component's narrow range (small components cost ~nothing)
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np

from offline_kd.errors import InternalError, OfflineKDError


@dataclass(frozen=True)
class FieldArray:
    """One stored per-frame array: name suffix, per-frame shape, numpy dtype, and whether chunks are stored
    component-major (transposed) for the compressor."""
    suffix: str
    shape: tuple
    dtype: str
    transpose: bool = False


def _logsumexp(z: np.ndarray) -> np.ndarray:
    """log(sum(exp(z))) over the last axis, (F, 1); a row of only -inf gives -inf (not nan)."""
    top = z.max(-1, keepdims=True)
    safe = np.where(np.isfinite(top), top, 0.0)
    return np.log(np.exp(z - safe).sum(-1, keepdims=True)) + safe


# ----------------------------------------------------------------------------------------- log-prob codecs
class _DenseFloat:
    """A dense per-frame vector of `_width()` values stored as `dtype` (float32 exact, float16 rounded)."""
    name: ClassVar[str] = "float32"
    dtype: ClassVar[str] = "float32"

    def _width(self) -> int:
        raise NotImplementedError

    def arrays(self) -> list[FieldArray]:
        return [FieldArray("", (self._width(),), self.dtype)]

    def encode(self, x: np.ndarray) -> dict:
        x = np.asarray(x, dtype=np.float32)
        if self.dtype == "float16":   # clip first: values beyond fp16's range (log-probs of -inf-like) stay finite
            x = np.clip(x, -65000.0, 65000.0)
        return {"": np.ascontiguousarray(x.astype(self.dtype))}

    def decode(self, a: dict) -> np.ndarray:
        return np.asarray(a[""], dtype=np.float32)

    def to_dict(self) -> dict:
        return {"name": self.name, **asdict(self)}


@dataclass(frozen=True)
class Float32LogProbs(_DenseFloat):
    num_classes: int

    def _width(self) -> int:
        return self.num_classes


@dataclass(frozen=True)
class Float16LogProbs(Float32LogProbs):
    name: ClassVar[str] = "float16"
    dtype: ClassVar[str] = "float16"


@dataclass(frozen=True)
class TopKLogProbs:
    name: ClassVar[str] = "topk"
    num_classes: int
    k: int = 16
    coverage: float | None = None
    tail: str = "uniform"              # uniform | prior | lowrank
    prior: np.ndarray | None = None    # (V,) mean teacher log-probs, for tail = prior (stored in the cache)
    tail_rank: int = 32                # tail = lowrank: coefficients per frame of the tail's shape
    tail_coeff: str = "int8"
    shape: LowRankLogProbs | None = None   # tail = lowrank: the fitted logit basis (stored in the cache)

    def __post_init__(self):
        if not 1 <= self.k < self.num_classes:
            raise OfflineKDError(f"codecs.topk_k must be in 1..{self.num_classes - 1}, got {self.k}")
        if self.coverage is not None and not 0.0 < self.coverage <= 1.0:
            raise OfflineKDError(f"codecs.topk_coverage must be in (0, 1], got {self.coverage}")
        if self.tail not in ("uniform", "prior", "lowrank"):
            raise OfflineKDError(f"codecs.topk_tail must be uniform, prior or lowrank, got {self.tail!r}")
        if self.tail == "lowrank" and self.shape is None:
            object.__setattr__(self, "shape", LowRankLogProbs(self.num_classes, self.tail_rank, self.tail_coeff))

    def with_prior(self, prior: np.ndarray) -> "TopKLogProbs":
        return TopKLogProbs(self.num_classes, self.k, self.coverage, self.tail, np.asarray(prior, np.float64))

    def with_state(self, basis, mean, scale=None) -> "TopKLogProbs":
        """tail = lowrank: the fitted logit basis that shapes the tail."""
        return TopKLogProbs(self.num_classes, self.k, self.coverage, self.tail, None, self.tail_rank,
                            self.tail_coeff, self.shape.with_state(basis, mean, scale))

    def _shape_arrays(self) -> list[FieldArray]:
        if self.tail != "lowrank":
            return []
        return [FieldArray("/tail_" + a.suffix[1:], a.shape, a.dtype) for a in self.shape.arrays()]

    def arrays(self) -> list[FieldArray]:
        idx_dtype = "uint16" if self.num_classes <= 65535 else "int32"
        return [FieldArray("/values", (self.k,), "float16"), FieldArray("/indices", (self.k,), idx_dtype),
                FieldArray("/count", (), "uint8" if self.k < 256 else "uint16"),
                FieldArray("/tail_log_mass", (), "float32"), *self._shape_arrays()]

    def encode(self, x: np.ndarray) -> dict:
        f = x.shape[0]
        idx = np.argpartition(-x, self.k - 1, axis=1)[:, : self.k]
        vals = np.take_along_axis(x, idx, 1)
        order = np.argsort(-vals, axis=1, kind="stable")
        idx = np.take_along_axis(idx, order, 1)
        vals = np.take_along_axis(vals, order, 1).astype(np.float64)
        probs = np.exp(vals)
        if self.coverage is None:
            count = np.full(f, self.k, dtype=np.int64)
        else:
            reached = np.cumsum(probs, axis=1) >= self.coverage
            count = np.where(reached.any(1), reached.argmax(1) + 1, self.k)
        keep = np.arange(self.k)[None, :] < count[:, None]
        # the tail is a logsumexp over the tokens not kept, in float64: log(1 - sum(kept)) would cancel
        # catastrophically on confident frames (and give -inf where the tail is tiny but not zero)
        rest = x.astype(np.float64)
        np.put_along_axis(rest, np.where(keep, idx, idx[:, :1]), -np.inf, axis=1)
        tail = _logsumexp(rest)[:, 0]
        vals16 = np.where(keep, np.clip(vals, -65000.0, 0.0), -np.inf).astype(np.float16)
        out = {"/values": vals16, "/indices": np.where(keep, idx, 0).astype(self.arrays()[1].dtype),
               "/count": count.astype(self.arrays()[2].dtype), "/tail_log_mass": tail.astype(np.float32)}
        if self.tail == "lowrank":
            out.update({"/tail_" + k[1:]: v for k, v in self.shape.encode(x).items()})
        return out

    def decode_sparse(self, a: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """-> values (F, k) log-probs (-inf where unused), indices (F, k), count (F,), tail_log_mass (F,)."""
        return (np.asarray(a["/values"], np.float32), np.asarray(a["/indices"], np.int64),
                np.asarray(a["/count"], np.int64), np.asarray(a["/tail_log_mass"], np.float32))

    def decode(self, a: dict) -> np.ndarray:
        values, indices, count, tail = self.decode_sparse(a)
        f = values.shape[0]
        keep = np.arange(self.k)[None, :] < count[:, None]
        rows = np.repeat(np.arange(f), self.k).reshape(f, self.k)
        if self.tail == "prior":
            if self.prior is None:
                raise InternalError("topk codec with tail 'prior' has no fitted prior (internal error)")
            prior = np.exp(self.prior)
            prior = prior / prior.sum()
            kept_prior = np.where(keep, prior[indices], 0.0).sum(1)
            # tail mass spread over the tokens not kept, in proportion to the prior
            scale = tail - np.log(np.maximum(1.0 - kept_prior, 1e-30))
            dense = (scale[:, None] + np.log(np.maximum(prior, 1e-30))[None, :]).astype(np.float32)
        elif self.tail == "lowrank":
            # the low-rank logits give the tail its shape, the stored tail mass its total (normalised once, over
            # the tokens not kept)
            dense = self.shape.logits({"/" + f.suffix[len("/tail_"):]: a[f.suffix] for f in self._shape_arrays()})
            dense[rows[keep], indices[keep]] = -np.inf
            dense = (dense - _logsumexp(dense) + tail[:, None]).astype(np.float32)
        else:
            rest = np.maximum(self.num_classes - count, 1).astype(np.float32)
            dense = np.repeat((tail - np.log(rest))[:, None], self.num_classes, axis=1).astype(np.float32)
        dense[rows[keep], indices[keep]] = values[keep]
        return dense

    def to_dict(self) -> dict:
        d = {"name": self.name, "num_classes": self.num_classes, "k": self.k, "coverage": self.coverage,
             "tail": self.tail}
        if self.tail == "lowrank":
            d.update(tail_rank=self.tail_rank, tail_coeff=self.tail_coeff)
        return d


@dataclass(frozen=True)
class SampledLogProbs:
    name: ClassVar[str] = "sampled"
    num_classes: int
    samples: int = 32
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.samples <= 255:
            raise OfflineKDError(f"codecs.sampled_n must be in 1..255, got {self.samples}")

    def arrays(self) -> list[FieldArray]:
        idx_dtype = "uint16" if self.num_classes <= 65535 else "int32"
        return [FieldArray("/indices", (self.samples,), idx_dtype), FieldArray("/counts", (self.samples,), "uint8")]

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

    def to_dict(self) -> dict:
        return {"name": self.name, **asdict(self)}


# ------------------------------------------------------------------------------------------- hidden codecs
@dataclass(frozen=True)
class Float32Hidden(_DenseFloat):
    dim: int

    def _width(self) -> int:
        return self.dim


@dataclass(frozen=True)
class Float16Hidden(Float32Hidden):
    name: ClassVar[str] = "float16"
    dtype: ClassVar[str] = "float16"


def _int8_encode(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scale = np.abs(x).max(axis=1) / 127.0
    safe = np.where(scale > 0, scale, 1.0)
    q = np.clip(np.rint(x / safe[:, None]), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


@dataclass(frozen=True)
class Int8Hidden(Float32Hidden):
    name: ClassVar[str] = "int8"
    dtype: ClassVar[str] = "int8"

    def arrays(self) -> list[FieldArray]:
        return [FieldArray("/q", (self.dim,), "int8"), FieldArray("/scale", (), "float32")]

    def encode(self, x: np.ndarray) -> dict:
        q, scale = _int8_encode(np.asarray(x, np.float32))
        return {"/q": q, "/scale": scale}

    def decode(self, a: dict) -> np.ndarray:
        return np.asarray(a["/q"], np.float32) * np.asarray(a["/scale"], np.float32)[:, None]


def _quantiser_step(variances: np.ndarray, dropped: float, energy: float, target: float) -> float:
    """The uniform quantiser step whose expected squared error, summed over components (a component smaller than
    the step is mostly rounded to 0 and loses its variance instead: the classic reverse water-filling), plus the
    energy of the components beyond the rank, is `target` x the frames' energy."""
    budget = target * energy - dropped
    if budget <= 0:
        raise OfflineKDError(f"the components beyond lowrank_rank already hold {dropped / energy:.2%} of the "
                             f"energy, more than lowrank_target_error ({target:.2%}); raise lowrank_rank")
    lo, hi = 1e-12, float(np.sqrt(variances.max() * 12.0)) + 1e-12
    for _ in range(100):
        step = float(np.sqrt(lo * hi))
        lo, hi = (step, hi) if np.minimum(variances, step * step / 12.0).sum() <= budget else (lo, step)
    return lo


def _pca(sample: np.ndarray, rank: int, target_error: float | None = None) -> dict[str, np.ndarray]:
    """PCA on (N, D) frames -> {"basis": (rank, D) orthonormal rows, "mean": (D,), "scale": (rank,) the standard
    deviation of each coefficient}, and with `target_error` the quantiser "step" (1,) that keeps the relative
    squared error sum((x - x')^2) / sum(x^2) at that target. Exact (eigendecomposition of the scatter matrix) up to
    4096 columns, randomised (torch.svd_lowrank) above."""
    x = np.asarray(sample, np.float64)
    mean = x.mean(0)
    x = x - mean
    if x.shape[1] <= 4096:              # eigenvectors of the D x D scatter matrix: ~7x faster than an SVD of x
        w, v = np.linalg.eigh(x.T @ x)
        s, vt = np.sqrt(np.maximum(w[::-1][:rank], 0.0)), v[:, ::-1][:, :rank].T
    else:
        import torch
        _, s_t, v_t = torch.svd_lowrank(torch.from_numpy(x), q=min(rank + 16, min(x.shape)), niter=4)
        s, vt = s_t[:rank].numpy(), v_t[:, :rank].T.numpy()
    n = max(len(x), 1)
    scale = s / np.sqrt(n)
    out = {"basis": vt.astype(np.float32), "mean": mean.astype(np.float32),
           "scale": np.where(scale > 1e-12, scale, 1.0).astype(np.float32)}
    if target_error is not None:
        spread = float((x ** 2).sum(1).mean())          # the centred frames' energy; + |mean|^2 = the frames'
        energy = spread + float(mean @ mean)
        dropped = spread - float((scale ** 2).sum())
        step = _quantiser_step(scale ** 2, max(dropped, 0.0), energy, target_error)
        if 4.0 * scale.max() / step > 127:
            raise OfflineKDError(f"lowrank_target_error {target_error} needs steps {step:.3g} that are too fine "
                                 f"for int8 codes of components as large as {scale.max():.3g}; raise the target or "
                                 f"use lowrank_coeff int8 / float16")
        out["step"] = np.array([step], np.float32)
    return out


@dataclass(frozen=True)
class _LowRank:
    """x ~ mean + coeffs @ basis, the basis fitted by PCA at dump time and stored in the cache. int8 coefficients
    are whitened first (divided by each component's standard deviation, `scale`) and then share one absmax scale per
    frame, so the small trailing components keep their precision next to the large leading ones."""

    coeff_modes: ClassVar[tuple] = ("float16", "int8")

    def _check(self, width: int):
        if not 1 <= self.rank <= width:
            raise OfflineKDError(f"codecs.{self.option}_rank must be in 1..{width}, got {self.rank}")
        if self.coeff not in self.coeff_modes:
            raise OfflineKDError(f"codecs.{self.option}_coeff must be {' or '.join(self.coeff_modes)}, "
                                 f"got {self.coeff!r}")

    def _arrays(self) -> list[FieldArray]:
        if self.coeff == "step":
            return [FieldArray("/codes", (self.rank,), "int8", transpose=True)]
        if self.coeff == "int8":
            return [FieldArray("/q", (self.rank,), "int8"), FieldArray("/scale", (), "float32")]
        return [FieldArray("/coeffs", (self.rank,), "float16")]

    def _whitening(self) -> np.ndarray:
        return np.ones(self.rank, np.float32) if self.scale is None else np.asarray(self.scale, np.float32)

    def _encode(self, x: np.ndarray) -> dict:
        if self.basis is None:
            raise InternalError(f"{self.name} codec has no fitted basis (internal error)")
        c = (x - self.mean) @ self.basis.T
        if self.coeff == "step":
            return {"/codes": np.clip(np.rint(c / self._step()), -127, 127).astype(np.int8)}
        if self.coeff == "int8":
            q, scale = _int8_encode(c / self._whitening())
            return {"/q": q, "/scale": scale}
        return {"/coeffs": c.astype(np.float16)}

    def _step(self) -> float:
        if self.step is None:
            raise InternalError(f"{self.name} codec with coeff 'step' has no fitted step (internal error)")
        return float(np.asarray(self.step).reshape(-1)[0])

    def _decode(self, a: dict) -> np.ndarray:
        if self.coeff == "step":
            c = np.asarray(a["/codes"], np.float32) * np.float32(self._step())
        elif self.coeff == "int8":
            c = np.asarray(a["/q"], np.float32) * (np.asarray(a["/scale"], np.float32)[:, None] * self._whitening())
        else:
            c = np.asarray(a["/coeffs"], np.float32)
        return c @ self.basis + self.mean


@dataclass(frozen=True)
class LowRankLogProbs(_LowRank):
    """The teacher's logits (log-probs centred per frame, which softmax cannot tell apart) ~ mean + coeffs @ basis;
    decoding applies log-softmax, so the target is always a normalised distribution with full support. A CTC
    teacher's logits lie close to a low-dimensional subspace (a linear output layer on a narrow hidden state, most
    frames blank-dominated), but PCA spends its precision evenly over all V logits, including tail values that carry
    no mass: on its own it needs many coefficients for a peaky teacher (docs/benchmarks.md). As the tail shape of
    the top-k codec (`tail: lowrank`), where the head is exact, about a hundred suffice."""
    name: ClassVar[str] = "lowrank"
    option: ClassVar[str] = "logits"
    num_classes: int
    rank: int = 32
    coeff: str = "int8"
    basis: np.ndarray | None = None
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None
    step: ClassVar[None] = None      # (the step mode is for hidden states only)

    def __post_init__(self):
        self._check(self.num_classes)

    @staticmethod
    def centre(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        return x - x.mean(1, keepdims=True)

    def fit(self, sample: np.ndarray) -> dict[str, np.ndarray]:
        return _pca(self.centre(sample), self.rank)

    def with_state(self, basis, mean, scale=None) -> "LowRankLogProbs":
        return LowRankLogProbs(self.num_classes, self.rank, self.coeff, basis, mean, scale)

    def arrays(self) -> list[FieldArray]:
        return self._arrays()

    def encode(self, x: np.ndarray) -> dict:
        return self._encode(self.centre(x))

    def logits(self, a: dict) -> np.ndarray:
        """The reconstructed logits, unnormalised (log-probs up to a per-frame constant)."""
        return self._decode(a)

    def decode(self, a: dict) -> np.ndarray:
        z = self._decode(a)
        return z - _logsumexp(z)

    def to_dict(self) -> dict:
        return {"name": self.name, "num_classes": self.num_classes, "rank": self.rank, "coeff": self.coeff}


@dataclass(frozen=True)
class LowRankHidden(_LowRank):
    """x ~ mean + coeffs @ basis. `basis` (r, D), `mean` (D,) and `scale` (r,) are fitted once and stored in the
    cache (caches written before `scale` existed decode with scale 1)."""
    name: ClassVar[str] = "lowrank"
    option: ClassVar[str] = "lowrank"
    coeff_modes: ClassVar[tuple] = ("float16", "int8", "step")
    dim: int
    rank: int = 256
    coeff: str = "float16"           # float16 | int8 | step
    target_error: float = 0.008      # coeff step: the relative squared error the fitted step aims at
    basis: np.ndarray | None = None  # (rank, dim), rows orthonormal
    mean: np.ndarray | None = None   # (dim,)
    scale: np.ndarray | None = None  # (rank,) coefficient standard deviations (int8 whitening)
    step: np.ndarray | None = None   # (1,) coeff step: the quantiser step shared by all components

    def __post_init__(self):
        self._check(self.dim)
        if self.coeff == "step" and not 0.0 < self.target_error < 1.0:
            raise OfflineKDError(f"codecs.lowrank_target_error must be in (0, 1), got {self.target_error}")

    def fit(self, sample: np.ndarray) -> dict[str, np.ndarray]:
        return _pca(sample, self.rank, self.target_error if self.coeff == "step" else None)

    def with_state(self, basis, mean, scale=None, step=None) -> "LowRankHidden":
        return LowRankHidden(self.dim, self.rank, self.coeff, self.target_error, basis, mean, scale, step)

    def arrays(self) -> list[FieldArray]:
        return self._arrays()

    def encode(self, x: np.ndarray) -> dict:
        return self._encode(np.asarray(x, np.float32))

    def decode(self, a: dict) -> np.ndarray:
        return self._decode(a)

    def to_dict(self) -> dict:
        d = {"name": self.name, "dim": self.dim, "rank": self.rank, "coeff": self.coeff}
        if self.coeff == "step":
            d["target_error"] = self.target_error
        return d


LOG_PROB_CODECS = {c.name: c for c in (Float32LogProbs, Float16LogProbs, TopKLogProbs, SampledLogProbs,
                                       LowRankLogProbs)}
HIDDEN_CODECS = {c.name: c for c in (Float32Hidden, Float16Hidden, Int8Hidden, LowRankHidden)}


def log_prob_codec(spec: dict):
    spec = dict(spec)
    name = spec.pop("name")
    if name not in LOG_PROB_CODECS:
        raise OfflineKDError(f"codecs.log_probs: unknown codec '{name}' ({' | '.join(LOG_PROB_CODECS)})")
    return LOG_PROB_CODECS[name](**spec)


def hidden_codec(spec: dict):
    spec = dict(spec)
    name = spec.pop("name")
    if name not in HIDDEN_CODECS:
        raise OfflineKDError(f"codecs.hidden: unknown codec '{name}' ({' | '.join(HIDDEN_CODECS)})")
    return HIDDEN_CODECS[name](**spec)
