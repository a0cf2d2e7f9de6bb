"""The top-k log-prob codec: the head of each frame's distribution exact, the tail's mass exact, its shape
approximated (uniform, prior or low-rank)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import torch

from offline_kd.cache.codecs.base import CodecBase, FieldArray, index_dtype, logsumexp
from offline_kd.cache.codecs.lowrank import LowRankLogProbs
from offline_kd.cache.codecs.registry import register_codec
from offline_kd.errors import InternalError, OfflineKDError


@register_codec
@dataclass(frozen=True, eq=False)
class TopKLogProbs(CodecBase):
    """Per frame the k largest log-probs (fp16) with their token ids and the log of the remaining tail mass;
    `coverage` makes k per frame the smallest that reaches that probability mass (capped at `k`). Decoding spreads
    the tail mass over the tokens not kept, so the dense distribution sums to 1: uniformly (`tail: uniform`), in
    proportion to the teacher's mean distribution fitted at dump time (`tail: prior`, stored at prior/log_probs),
    or shaped per frame by a low-rank reconstruction of the logits (`tail: lowrank`: the head exact, the tail's
    total exact, its shape from `tail_rank` coefficients on a basis stored at lowrank/log_probs)."""
    field: ClassVar[str] = "log_probs"
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

    # ---------------------------------------------------------------------------------------- fitted state
    @property
    def fit_required(self) -> bool:
        return (self.tail == "prior" and self.prior is None) or (self.tail == "lowrank" and self.shape.fit_required)

    @property
    def fit_frames_needed(self) -> int:
        return self.shape.rank if self.tail == "lowrank" else 0

    def fit(self, sample: np.ndarray) -> "TopKLogProbs":
        """prior: the mean teacher distribution of the sample; lowrank: the logit basis of the sample."""
        if self.tail == "prior":
            mean_p = np.exp(np.asarray(sample).astype(np.float64)).mean(0)
            return self.with_state({"prior": np.log(np.maximum(mean_p, 1e-30)).astype(np.float32)})
        if self.tail == "lowrank":
            return replace(self, shape=self.shape.fit(sample))
        return self

    def state(self) -> dict[str, np.ndarray]:
        if self.tail == "prior" and self.prior is not None:
            return {"prior": np.asarray(self.prior, np.float32)}
        if self.tail == "lowrank":
            return self.shape.state()
        return {}

    def with_state(self, state: dict[str, np.ndarray]) -> "TopKLogProbs":
        if self.tail == "prior":
            return replace(self, prior=np.asarray(state["prior"], np.float64))
        if self.tail == "lowrank":
            return replace(self, shape=self.shape.with_state(state))
        return self

    def state_paths(self, field_path: str) -> dict[str, str]:
        if self.tail == "prior":
            return {"prior": f"prior/{field_path}"}
        if self.tail == "lowrank":
            return self.shape.state_paths(field_path)
        return {}

    # ------------------------------------------------------------------------------------------ the arrays
    def _shape_arrays(self) -> list[FieldArray]:
        if self.tail != "lowrank":
            return []
        return [FieldArray("/tail_" + a.suffix[1:], a.shape, a.dtype) for a in self.shape.arrays()]

    def arrays(self) -> list[FieldArray]:
        return [FieldArray("/values", (self.k,), "float16"),
                FieldArray("/indices", (self.k,), index_dtype(self.num_classes)),
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
        tail = logsumexp(rest)[:, 0]
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
            dense = (dense - logsumexp(dense) + tail[:, None]).astype(np.float32)
        else:
            rest = np.maximum(self.num_classes - count, 1).astype(np.float32)
            dense = np.repeat((tail - np.log(rest))[:, None], self.num_classes, axis=1).astype(np.float32)
        dense[rows[keep], indices[keep]] = values[keep]
        return dense

    def gather(self, a: dict, tokens: np.ndarray) -> np.ndarray:
        """decode(a)[f, tokens[f]], bit for bit, without the dense decode where every token is kept (its value is
        stored exactly; the teacher's 1-best always is). Where a token lies in the tail, the whole block is decoded
        as decode() decodes it: a matmul over a subset of the rows may take another BLAS kernel and differ in the
        last bit, so the tail is never decoded on a subset."""
        values, indices, count, _ = self.decode_sparse(a)
        tokens = np.asarray(tokens, np.int64)
        hit = (indices == tokens[:, None]) & (np.arange(self.k)[None, :] < count[:, None])
        found = hit.any(1)
        out = np.where(found, values[np.arange(len(tokens)), hit.argmax(1)], 0.0).astype(np.float32)
        miss = np.flatnonzero(~found)
        if len(miss):
            out[miss] = self.decode(a)[miss, tokens[miss]]
        return out

    def device_state(self, device) -> dict:
        if self.tail == "prior":
            if self.prior is None:
                raise InternalError("topk codec with tail 'prior' has no fitted prior (internal error)")
            prior = np.exp(np.asarray(self.prior, np.float64))
            prior = prior / prior.sum()
            return {"prior": torch.from_numpy(prior).to(device),
                    "log_prior": torch.from_numpy(np.log(np.maximum(prior, 1e-30))).to(device)}
        if self.tail == "lowrank":
            return self.shape.device_state(device)
        return {}

    def encode_torch(self, x, state: dict) -> dict:
        """encode() on the device: the same selection, coverage and float64 tail (ties may be ordered otherwise)."""
        vals, idx = torch.topk(x, self.k, dim=1)              # largest first
        vals = vals.double()
        if self.coverage is None:
            count = torch.full((x.shape[0],), self.k, dtype=torch.long, device=x.device)
        else:
            reached = torch.cumsum(vals.exp(), 1) >= self.coverage
            count = torch.where(reached.any(1), reached.to(torch.int8).argmax(1) + 1, self.k)
        keep = torch.arange(self.k, device=x.device)[None, :] < count[:, None]
        rest = x.double().scatter(1, torch.where(keep, idx, idx[:, :1]), float("-inf"))
        out = {"/values": torch.where(keep, vals.clamp(-65000.0, 0.0), float("-inf")).half(),
               "/indices": torch.where(keep, idx, 0), "/count": count,
               "/tail_log_mass": torch.logsumexp(rest, 1).float()}
        if self.tail == "lowrank":
            out.update({"/tail_" + k[1:]: v for k, v in self.shape.encode_torch(x, state).items()})
        return out

    def decode_torch(self, a: dict, state: dict):
        """decode() on the device, without a host sync: entries not kept scatter into a spare column."""
        values, tail = a["/values"].float(), a["/tail_log_mass"].float()
        indices, count = a["/indices"].long(), a["/count"].long()
        f, v = values.shape[0], self.num_classes
        keep = torch.arange(self.k, device=values.device)[None, :] < count[:, None]
        slot = torch.where(keep, indices, v)                   # column v: the spare one for entries not kept
        if self.tail == "prior":
            kept_prior = torch.where(keep, state["prior"][indices], 0.0).sum(1)
            scale = tail.double() - torch.log(torch.clamp(1.0 - kept_prior, min=1e-30))
            dense = (scale[:, None] + state["log_prior"][None, :]).float()
        elif self.tail == "lowrank":
            dense = self.shape._decode_torch({"/" + x.suffix[len("/tail_"):]: a[x.suffix]
                                              for x in self._shape_arrays()}, state)
            kept = torch.zeros(f, v + 1, dtype=torch.bool, device=values.device).scatter_(1, slot, True)[:, :v]
            dense = dense.masked_fill(kept, float("-inf"))
            dense = dense - torch.logsumexp(dense, -1, keepdim=True) + tail[:, None]
        else:
            rest = torch.clamp(v - count, min=1).float()
            dense = (tail - torch.log(rest))[:, None].expand(f, v)
        out = torch.cat([dense, dense.new_zeros(f, 1)], 1).scatter_(1, slot, values)
        return out[:, :v]

    def to_dict(self) -> dict:
        d = {"name": self.name, "num_classes": self.num_classes, "k": self.k, "coverage": self.coverage,
             "tail": self.tail}
        if self.tail == "lowrank":
            d.update(tail_rank=self.tail_rank, tail_coeff=self.tail_coeff)
        return d
