"""Augmented views of an utterance, each reproducible from (utterance, view, seed).

A view is a deterministic transform of an utterance's feature sequence: speed perturbation (the time axis resampled
by linear interpolation: `speed` 1.1 is 10% faster, hence round(T / 1.1) frames) followed by SpecAugment masks whose
positions are drawn from a random stream seeded by (seed, view index, utterance id). The same (utterance, view,
seed) always gives the same features, in any process, so the teacher can be run once per view at dump time and the
student can be given, later, the very view the cached targets were computed on (consistent teaching, Beyer et al.
2022). Speed perturbation here acts on the features (a time stretch of the filterbank frames), not on the waveform:
it changes duration, not pitch.

    ViewSpec          one view's parameters (speed, masks); `parse_views` validates a config's list of them
    ViewReader        a split read through one view: the SplitReader interface, lengths and features transformed
    ViewBatchSampler  wraps a batch sampler; every batch gets one view, drawn from (seed, epoch, batch number)
    view_name         the cache split name of split `s` seen through view k: "s@k"
"""

from __future__ import annotations

import hashlib

import numpy as np

from offline_kd.data.corpus import feature_sha256
from offline_kd.config import ViewSpec, parse_views  # noqa: F401  (re-exported: views are config data)
from offline_kd.data.validate import validate_split
from offline_kd.errors import OfflineKDError

VIEW_SEP = "@"
def view_name(split: str, k: int) -> str:
    return f"{split}{VIEW_SEP}{k}"


def split_of(name: str) -> tuple[str, int | None]:
    """"train@2" -> ("train", 2); "train" -> ("train", None)."""
    base, sep, k = name.rpartition(VIEW_SEP)
    if sep and k.isdigit():
        return base, int(k)
    return name, None


def view_rng(seed: int, view: int, utterance_id: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}/{view}/{utterance_id}".encode()).digest()
    return np.random.default_rng(np.frombuffer(digest[:16], dtype=np.uint32))


def stretch(features: np.ndarray, speed: float) -> np.ndarray:
    """(T, D) -> (round(T / speed), D): frame t of the result is the input at time t * speed (linear interpolation,
    the last frame held)."""
    if speed == 1.0:
        return features
    n = len(features)
    m = ViewSpec(speed).frames(n)
    pos = np.minimum(np.arange(m, dtype=np.float64) * speed, n - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    w = (pos - lo)[:, None]
    return ((1 - w) * features[lo] + w * features[hi]).astype(features.dtype)


def apply_view(features: np.ndarray, spec: ViewSpec, seed: int, view: int, utterance_id: str) -> np.ndarray:
    """One utterance's (T, D) features seen through view `view` (its spec): stretched, then masked with zeros."""
    x = stretch(features, spec.speed)
    if not (spec.time_masks or spec.freq_masks):
        return x
    x = np.array(x, dtype=np.float32, copy=True)
    rng = view_rng(seed, view, utterance_id)
    t, d = x.shape
    for _ in range(spec.freq_masks):
        w = int(rng.integers(0, spec.freq_mask_width + 1))
        f0 = int(rng.integers(0, max(1, d - w)))
        x[:, f0:f0 + w] = 0
    for _ in range(spec.time_masks):
        w = min(int(rng.integers(0, spec.time_mask_width + 1)), t)
        t0 = int(rng.integers(0, max(1, t - w)))
        x[t0:t0 + w, :] = 0
    return x


class ViewReader:
    """A split (SplitReader or ConcatSplitReader) seen through view `view`: the same interface, with the view's
    frame counts and features. Feature hashes stay those of the corpus's own features, so a cache of a view is
    checked against the corpus like any other; with `verify=True` every read also checks the underlying features
    against their stored hash."""

    def __init__(self, base, spec: ViewSpec, seed: int, view: int, verify: bool = False):
        self.base, self.spec, self.seed, self.view, self.verify = base, spec, seed, view, verify
        self.lengths = np.array([spec.frames(int(n)) for n in base.lengths], dtype=np.int64)

    def __getattr__(self, name):        # utterance_ids, transcripts, index, feature_dim, nonfinite, ...
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def __len__(self) -> int:
        return len(self.base)

    def __getstate__(self):
        return dict(self.__dict__)

    def __setstate__(self, state):
        self.__dict__.update(state)

    @property
    def path(self):
        return self.base.path

    def features(self, i: int) -> np.ndarray:
        x = self.base.features(i)
        if self.verify and self.base.feature_hashes is not None and \
                feature_sha256(x) != self.base.feature_hashes[i]:
            raise OfflineKDError(f"utterance {self.base.utterance_ids[i]}: features changed since the corpus was "
                                 f"written (feature_sha256 mismatch)")
        return apply_view(x, self.spec, self.seed, self.view, self.base.utterance_ids[i])


def view_for_batch(seed: int, epoch: int, batch_number: int, num_views: int) -> int:
    return int(np.random.default_rng([seed, epoch, batch_number, 7919]).integers(num_views))


class ViewBatchSampler:
    """A batch sampler whose batches each carry a view: yields (view, batch) for datasets that take a whole batch
    (`ByView` over `DistillBatchDataset`s, `CollatedByView`). The view of batch b of epoch e is drawn from (seed, e,
    b), b numbering the epoch's batches before they are dealt to the ranks, so a resumed run and N torchrun ranks see
    the views one process would."""

    def __init__(self, sampler, num_views: int, seed: int):
        self.sampler, self.num_views, self.seed = sampler, num_views, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        rank, world = getattr(self.sampler, "rank", 0), getattr(self.sampler, "world_size", 1)
        for b, batch in enumerate(self.sampler):        # this rank's batch b is the epoch's batch b * world + rank
            k = view_for_batch(self.seed, self.epoch, b * world + rank, self.num_views)
            yield k, batch


class ByView:
    """Datasets of the same utterances seen through different views, indexed by (view, key): dataset k gets `key`
    (a batch of indices for batch datasets, one index for item datasets)."""

    def __init__(self, datasets: list):
        self.datasets = list(datasets)

    def __len__(self) -> int:
        return len(self.datasets[0])

    def __getitem__(self, view_and_key):
        k, key = view_and_key
        return self.datasets[k][key]


class CollatedByView:
    """Item datasets of the same utterances through different views, read a whole batch at a time: `[(view,
    indices)]` -> `collate` of dataset `view`'s items (`offline-kd train` with augment.speed_perturb)."""

    def __init__(self, datasets: list, collate):
        self.datasets, self.collate = list(datasets), collate

    def __len__(self) -> int:
        return len(self.datasets[0])

    def __getitem__(self, view_and_indices):
        k, indices = view_and_indices
        return self.collate([self.datasets[k][i] for i in indices])


def valid_in_views(readers: list, valid: np.ndarray, vocab, model_cfg, skip_invalid: bool, log) -> np.ndarray:
    """The indices of `valid` that are valid in every view (a faster view can leave a transcript too long for the
    model's output frames)."""
    keep = set(np.asarray(valid).tolist())
    for r in readers:
        keep &= set(validate_split(r, vocab, model_cfg.input_dim, model_cfg.subsampling, skip_invalid=skip_invalid,
                                   log=log).tolist())
    return np.array(sorted(keep), dtype=np.int64)


def max_view_lengths(lengths: np.ndarray, views: tuple[ViewSpec, ...]) -> np.ndarray:
    """Per utterance, its longest view's frame count: what batches are cut by (padding and max_frames hold for
    every view)."""
    return np.max([[v.frames(int(n)) for n in lengths] for v in views], axis=0).astype(np.int64)


def corpus_reader(corpus, cache_split: str, views: dict):
    """The corpus reader a cache split was computed from: the corpus split itself, or, for "split@k", that split
    seen through the cache's view k (`views`: CacheMeta.views)."""
    base, k = split_of(cache_split)
    if k is None or base not in views["splits"]:
        return corpus.split(cache_split)
    specs = parse_views(views["views"], "the cache's dump.views")
    if k >= len(specs):
        raise OfflineKDError(f"cache split {cache_split}: the cache has {len(specs)} views")
    return ViewReader(corpus.split(base), specs[k], views["seed"], k)
