"""Codebook (multi-codebook vector quantisation) codec for hidden states, as in icefall's MVQ-KD: a layer's frame
is split into `num_codebooks` contiguous sub-vectors (product quantisation), each replaced by the index of its
nearest of `entries` centroids: one uint8 per codebook per frame (16 bytes a frame with 16 codebooks, against
1,536 in float16 at 768 wide). The centroids are fitted at dump time by k-means (a fixed seed) on the fit sample of frames
(`lowrank_fit_frames`), stored in the cache (codebook/<field>/codebooks, mean) and sealed like the low-rank bases.

Decoding gives the reconstruction (the chosen centroids, concatenated, plus the mean), so MSE feature matching
works from a codebook cache too; the codebook loss (`distill.feature_loss: codebook`) trains the student to predict
the indexes themselves. Re-encoding a reconstruction gives back its stored indexes (each sub-vector is its own
nearest centroid; equal centroids resolve to the first, as in encoding), which is how the loss reads them from
decoded targets, and how it quantises a live teacher's states with the cache's codebooks."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import torch

from offline_kd.cache.codecs.base import CodecBase, FieldArray
from offline_kd.cache.codecs.registry import register_codec
from offline_kd.errors import InternalError, OfflineKDError


def kmeans(x: torch.Tensor, k: int, iterations: int, generator: torch.Generator) -> torch.Tensor:
    """Lloyd's k-means on (N, d) float32 rows -> (k, d) centroids. Initialised with k rows drawn by `generator`
    (k-means++ would cost a pass per centroid); a centroid left empty is re-seeded with the rows farthest from their
    own centroid (rows that sit on a centroid are never taken), so on a sample of at least k distinct rows every
    entry is used. It stops early at a fixed point (the same assignment as the step before, which left no entry
    empty: the centroids would not move), with the centroids the remaining iterations would give."""
    n = len(x)
    c = x[torch.randperm(n, generator=generator)[:k]].clone()
    before, settled = None, False
    xx = (x * x).sum(1)
    for _ in range(iterations):
        # |x - c|^2 = |x|^2 + (|c|^2 - 2 x.c): the argmin needs only the bracket; the distances themselves (for
        # re-seeding) add |x|^2 back
        part, assign = torch.addmm((c * c).sum(1)[None, :], x, c.T, alpha=-2.0).min(1)
        if settled and torch.equal(assign, before):
            break
        before = assign
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        filled = counts > 0
        c[filled] = sums[filled] / counts[filled, None].float()
        empty = torch.nonzero(~filled).flatten()
        settled = len(empty) == 0
        if len(empty):
            best = (xx + part).clamp_min(0)
            order = torch.argsort(best, descending=True)
            far = order[best[order] > 0][:len(empty)]
            c[empty[:len(far)]] = x[far]
    return c


def nearest(x: torch.Tensor, codebooks: torch.Tensor, sub: int, chunk: int = 512) -> torch.Tensor:
    """(F, N * sub) centred rows, (N, K, sub) centroids -> (F, N) int64: each sub-vector's nearest centroid
    (argmin of |c|^2 - 2 x.c, in chunks of frames so the (N, chunk, K) distances stay in cache)."""
    n = codebooks.shape[0]
    norms = (codebooks * codebooks).sum(-1)[:, None, :]                           # (N, 1, K)
    books_t = codebooks.transpose(1, 2)                                           # (N, sub, K)
    out = torch.empty(len(x), n, dtype=torch.int64, device=x.device)
    for lo in range(0, len(x), chunk):
        parts = x[lo:lo + chunk].reshape(-1, n, sub).transpose(0, 1)              # (N, f, sub)
        out[lo:lo + chunk] = torch.baddbmm(norms, parts, books_t, alpha=-2.0).argmin(-1).transpose(0, 1)
    return out


@register_codec
@dataclass(frozen=True, eq=False)
class CodebookHidden(CodecBase):
    """x ~ mean + concat(codebooks[n][codes[n]] for n < num_codebooks): product quantisation with `entries`
    centroids per codebook (at most 256: one uint8 each). A width that `num_codebooks` does not divide is padded
    with zeros to the next multiple (the padding decodes to nothing)."""
    field: ClassVar[str] = "hidden"
    name: ClassVar[str] = "codebook"
    state_keys: ClassVar[tuple] = ("codebooks", "mean", "fit_error")
    dim: int
    num_codebooks: int = 16
    entries: int = 256
    iterations: int = 15
    seed: int = 0
    fit_frames: int = 8192                 # frames of the fit sample k-means runs on (evenly strided); more cost more
    codebooks: np.ndarray | None = None    # (num_codebooks, entries, sub) float32
    mean: np.ndarray | None = None         # (dim,) float32
    fit_error: np.ndarray | None = None    # (1,) relative squared error sum((x - x')^2) / sum(x^2) on the fit sample

    def __post_init__(self):
        for key, v, lo, hi in (("num_codebooks", self.num_codebooks, 1, self.dim), ("entries", self.entries, 2, 256),
                               ("iterations", self.iterations, 1, 1000), ("fit_frames", self.fit_frames, 2, 10 ** 7)):
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise OfflineKDError(f"codecs.hidden codebook: {key} must be an integer in {lo}..{hi} "
                                     f"(hidden width {self.dim}), got {v!r}")
        if self.num_codebooks * self.sub - self.dim >= self.sub:       # a codebook of padding only
            raise OfflineKDError(f"codecs.hidden codebook: {self.num_codebooks} codebooks of ceil({self.dim} / "
                                 f"{self.num_codebooks}) = {self.sub} leave the last one(s) with padding only; "
                                 f"choose num_codebooks so that it (nearly) divides the width {self.dim}")

    @property
    def sub(self) -> int:
        return -(-self.dim // self.num_codebooks)

    @property
    def fit_required(self) -> bool:
        return self.codebooks is None

    @property
    def fit_frames_needed(self) -> int:
        return self.entries

    def state(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in self.state_keys if getattr(self, k) is not None}

    def with_state(self, state: dict[str, np.ndarray]):
        return replace(self, **{k: state.get(k) for k in self.state_keys})

    def state_paths(self, field_path: str) -> dict[str, str]:
        return {k: f"codebook/{field_path}/{k}" for k in self.state_keys}

    def to_dict(self) -> dict:
        return {"name": self.name, "dim": self.dim, "num_codebooks": self.num_codebooks, "entries": self.entries,
                "iterations": self.iterations, "seed": self.seed, "fit_frames": self.fit_frames}

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        extra = self.num_codebooks * self.sub - self.dim
        return torch.nn.functional.pad(x, (0, extra)) if extra else x

    def fit(self, sample: np.ndarray) -> "CodebookHidden":
        x = np.asarray(sample, np.float32)
        if len(x) < self.entries:
            raise OfflineKDError(f"codecs.hidden codebook: fitting {self.entries} entries needs at least that many "
                                 f"frames, the fit sample has {len(x)} (raise dump.codecs.lowrank_fit_frames or "
                                 f"lower entries)")
        mean = x.mean(0)
        km = x[::max(1, len(x) // self.fit_frames)][:self.fit_frames] if len(x) > self.fit_frames else x
        parts = self._pad(torch.from_numpy(km - mean)).view(len(km), self.num_codebooks, self.sub)
        g = torch.Generator().manual_seed(self.seed)
        books = torch.stack([kmeans(parts[:, n].contiguous(), self.entries, self.iterations, g)
                             for n in range(self.num_codebooks)])
        books = self._separate(books, parts, g, mean)
        fitted = self.with_state({"codebooks": books.numpy().astype(np.float32), "mean": mean.astype(np.float32)})
        err = float(((fitted.decode(fitted.encode(x)) - x) ** 2).sum() / max((x.astype(np.float64) ** 2).sum(),
                                                                           1e-30))
        return fitted.with_state({**fitted.state(), "fit_error": np.array([err], np.float32)})

    def _separate(self, books: torch.Tensor, parts: torch.Tensor, g: torch.Generator, mean: np.ndarray,
                  tries: int = 8) -> torch.Tensor:
        """Every entry must re-encode to itself through decode (the loss reads stored indexes back from the decoded
        reconstruction): an entry that does not (a duplicate, or one a float rounding step from another) is moved
        to a sample row no entry sits on. A sample with fewer distinct sub-vectors than entries is refused."""
        k, n = self.entries, self.num_codebooks
        own = torch.arange(k)[:, None].expand(k, n)
        for _ in range(tries):
            trial = self.with_state({"codebooks": books.numpy(), "mean": mean.astype(np.float32)})
            st = trial.device_state("cpu")
            back = trial.codes_torch(trial.decode_torch({"/codes": own}, st), st)
            bad = back != own
            if not bad.any():
                return books
            for b in torch.nonzero(bad.any(0)).flatten().tolist():
                rows = parts[:, b]
                d = ((rows[:, None, :] - books[b][None]) ** 2).sum(-1).min(1).values
                free = torch.unique(rows[d > 0], dim=0)       # distinct sub-vectors no entry sits on
                idx = torch.nonzero(bad[:, b]).flatten()
                if len(free) < len(idx):
                    raise OfflineKDError(f"codecs.hidden codebook: codebook {b} of the fit sample has fewer distinct "
                                         f"sub-vectors than its {k} entries; lower entries or fit on more frames")
                books[b, idx] = free[torch.randperm(len(free), generator=g)[:len(idx)]]
        raise OfflineKDError(f"codecs.hidden codebook: could not make the {k} entries of every codebook distinct on "
                             f"the fit sample; lower entries or fit on more frames")

    def arrays(self) -> list[FieldArray]:
        return [FieldArray("/codes", (self.num_codebooks,), "uint8")]

    def _need_state(self):
        if self.codebooks is None:
            raise InternalError("codebook codec has no fitted codebooks (internal error)")

    def device_state(self, device) -> dict:
        self._need_state()
        return {"codebooks": torch.from_numpy(np.asarray(self.codebooks, np.float32)).to(device),
                "mean": torch.from_numpy(np.asarray(self.mean, np.float32)).to(device)}

    def encode_torch(self, x, state: dict) -> dict:
        return {"/codes": nearest(self._pad(x.float() - state["mean"]), state["codebooks"], self.sub).to(torch.uint8)}

    def decode_torch(self, a: dict, state: dict):
        codes = a["/codes"].long()                                                     # (F, N)
        books = state["codebooks"]
        parts = books[torch.arange(self.num_codebooks, device=codes.device)[None, :], codes]   # (F, N, sub)
        return parts.reshape(len(codes), self.num_codebooks * self.sub)[:, :self.dim] + state["mean"]

    def encode(self, x: np.ndarray) -> dict:      # the torch code on the host: the same codes as encode_torch
        st = self.device_state("cpu")
        return {k: v.numpy() for k, v in self.encode_torch(torch.from_numpy(np.asarray(x, np.float32)), st).items()}

    def decode(self, a: dict) -> np.ndarray:
        st = self.device_state("cpu")
        return self.decode_torch({k: torch.from_numpy(np.asarray(v)) for k, v in a.items()}, st).numpy()

    def codes_torch(self, x, state: dict):
        """(F, D) hidden states (a live teacher's, or a decoded reconstruction) -> (F, N) int64 indexes."""
        return nearest(self._pad(x.float() - state["mean"]), state["codebooks"], self.sub)

    @property
    def relative_error(self) -> float | None:
        return None if self.fit_error is None else float(np.asarray(self.fit_error).reshape(-1)[0])
