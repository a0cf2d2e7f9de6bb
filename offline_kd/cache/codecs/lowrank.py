"""Low-rank codecs: values ~ mean + coeffs @ basis, the basis fitted by PCA at dump time and stored in the cache
(lowrank/<field>/basis, mean, scale[, step]). Log-probs: the logits (centred per frame), decoded by log-softmax.
Hidden states: coefficients as fp16, whitened int8, or int8 codes of one quantiser step fitted for a target
relative error, stored component-major so zstd entropy-codes each component's narrow range."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import torch

from offline_kd.cache.codecs.base import CodecBase, FieldArray, int8_encode, int8_encode_torch, logsumexp
from offline_kd.cache.codecs.registry import register_codec
from offline_kd.errors import InternalError, OfflineKDError


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


class _LowRank(CodecBase):
    """x ~ mean + coeffs @ basis, the basis fitted by PCA at dump time and stored in the cache. int8 coefficients
    are whitened first (divided by each component's standard deviation, `scale`) and then share one absmax scale per
    frame, so the small trailing components keep their precision next to the large leading ones."""

    coeff_modes: ClassVar[tuple] = ("float16", "int8")

    @property
    def fit_required(self) -> bool:
        return self.basis is None

    @property
    def fit_frames_needed(self) -> int:
        return self.rank

    def state(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in self.state_keys if getattr(self, k) is not None}

    def with_state(self, state: dict[str, np.ndarray]):
        return replace(self, **{k: state.get(k) for k in self.state_keys})

    def state_paths(self, field_path: str) -> dict[str, str]:
        return {k: f"lowrank/{field_path}/{k}" for k in self.state_keys}

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
            q, scale = int8_encode(c / self._whitening())
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

    def device_state(self, device) -> dict:
        if self.basis is None:
            raise InternalError(f"{self.name} codec has no fitted basis (internal error)")
        st = {k: torch.from_numpy(np.asarray(v, np.float32)).to(device)
              for k, v in (("basis", self.basis), ("mean", self.mean), ("whitening", self._whitening()))}
        if self.coeff == "step":
            st["step"] = self._step()
        return st

    def _encode_torch(self, x, st: dict) -> dict:
        c = (x - st["mean"]) @ st["basis"].T
        if self.coeff == "step":
            return {"/codes": torch.clamp(torch.round(c / st["step"]), -127, 127).to(torch.int8)}
        if self.coeff == "int8":
            q, scale = int8_encode_torch(c / st["whitening"])
            return {"/q": q, "/scale": scale}
        return {"/coeffs": c.half()}

    def _decode_torch(self, a: dict, st: dict):
        if self.coeff == "step":
            c = a["/codes"].float() * st["step"]
        elif self.coeff == "int8":
            c = a["/q"].float() * (a["/scale"].float()[:, None] * st["whitening"])
        else:
            c = a["/coeffs"].float()
        return c @ st["basis"] + st["mean"]


@register_codec
@dataclass(frozen=True, eq=False)
class LowRankLogProbs(_LowRank):
    """The teacher's logits (log-probs centred per frame, which softmax cannot tell apart) ~ mean + coeffs @ basis;
    decoding applies log-softmax, so the target is always a normalised distribution with full support. A CTC
    teacher's logits lie close to a low-dimensional subspace (a linear output layer on a narrow hidden state, most
    frames blank-dominated), but PCA spends its precision evenly over all V logits, including tail values that carry
    no mass: on its own it needs many coefficients for a peaky teacher (docs/benchmarks.md). As the tail shape of
    the top-k codec (`tail: lowrank`), where the head is exact, about a hundred suffice."""
    field: ClassVar[str] = "log_probs"
    name: ClassVar[str] = "lowrank"
    option: ClassVar[str] = "logits"
    state_keys: ClassVar[tuple] = ("basis", "mean", "scale")
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

    def fit(self, sample: np.ndarray) -> "LowRankLogProbs":
        return self.with_state(_pca(self.centre(sample), self.rank))

    def arrays(self) -> list[FieldArray]:
        return self._arrays()

    def encode(self, x: np.ndarray) -> dict:
        return self._encode(self.centre(x))

    def logits(self, a: dict) -> np.ndarray:
        """The reconstructed logits, unnormalised (log-probs up to a per-frame constant)."""
        return self._decode(a)

    def decode(self, a: dict) -> np.ndarray:
        z = self._decode(a)
        return z - logsumexp(z)

    def decode_torch(self, a: dict, state: dict):
        return self._decode_torch(a, state).log_softmax(-1)

    def encode_torch(self, x, state: dict) -> dict:
        return self._encode_torch(x - x.mean(1, keepdim=True), state)

    def to_dict(self) -> dict:
        return {"name": self.name, "num_classes": self.num_classes, "rank": self.rank, "coeff": self.coeff}


@register_codec
@dataclass(frozen=True, eq=False)
class LowRankHidden(_LowRank):
    """x ~ mean + coeffs @ basis. `basis` (r, D), `mean` (D,) and `scale` (r,) are fitted once and stored in the
    cache (caches written before `scale` existed decode with scale 1)."""
    field: ClassVar[str] = "hidden"
    name: ClassVar[str] = "lowrank"
    option: ClassVar[str] = "lowrank"
    state_keys: ClassVar[tuple] = ("basis", "mean", "scale", "step")
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

    def fit(self, sample: np.ndarray) -> "LowRankHidden":
        return self.with_state(_pca(sample, self.rank, self.target_error if self.coeff == "step" else None))

    def arrays(self) -> list[FieldArray]:
        return self._arrays()

    def encode(self, x: np.ndarray) -> dict:
        return self._encode(np.asarray(x, np.float32))

    def decode(self, a: dict) -> np.ndarray:
        return self._decode(a)

    def decode_torch(self, a: dict, state: dict):
        return self._decode_torch(a, state)

    def encode_torch(self, x, state: dict) -> dict:
        return self._encode_torch(x, state)

    def to_dict(self) -> dict:
        d = {"name": self.name, "dim": self.dim, "rank": self.rank, "coeff": self.coeff}
        if self.coeff == "step":
            d["target_error"] = self.target_error
        return d
