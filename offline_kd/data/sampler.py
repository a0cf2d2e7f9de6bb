"""Length-bucketed batch sampler: reads lengths only, never features.

Utterances are sorted by length and cut into `num_buckets` buckets of equal count; each epoch shuffles within
buckets, cuts batches bounded by `batch_size` utterances and/or `max_frames` padded frames, and shuffles the batch
order. The result depends only on (seed, epoch), so resume and multi-process runs see the same batches.
"""

from __future__ import annotations

import numpy as np


def make_batches(lengths: np.ndarray, indices: np.ndarray, batch_size: int | None, max_frames: int | None,
                 order: np.ndarray) -> list[list[int]]:
    """Cut `order` (positions into `indices`) into batches; padded size = max length * count."""
    batches: list[list[int]] = []
    cur: list[int] = []
    cur_max = 0
    for pos in order:
        n = int(lengths[indices[pos]])
        new_max = max(cur_max, n)
        too_many = batch_size is not None and len(cur) + 1 > batch_size
        too_long = max_frames is not None and cur and new_max * (len(cur) + 1) > max_frames
        if cur and (too_many or too_long):
            batches.append(cur)
            cur, new_max = [], n
        cur.append(int(indices[pos]))
        cur_max = new_max
    if cur:
        batches.append(cur)
    return batches


def shard_batches(batches: list, rank: int, world_size: int) -> list:
    """This rank's share of the batches, dealt round-robin (rank r gets batches r, r + N, ...), so that step k of
    N ranks sees batches kN..kN+N-1, as N accumulation steps of one process would. Every rank gets the same
    number; the remainder (< N batches per epoch) is dropped."""
    if world_size <= 1:
        return batches
    n = len(batches) // world_size
    return batches[rank:n * world_size:world_size]


class _EpochBatches:
    """The epoch logic both samplers share: an epoch's batches are a pure function of (seed, epoch), made once per
    epoch (not again for every len()) and dealt out to this rank."""

    def _init_epochs(self, seed: int, rank: int, world_size: int) -> None:
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0
        self._made: tuple[int, list] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _make(self, rng: np.random.Generator) -> list[list[int]]:
        raise NotImplementedError

    def batches(self) -> list[list[int]]:
        if self._made is None or self._made[0] != self.epoch:
            out = self._make(np.random.default_rng([self.seed, self.epoch]))
            self._made = (self.epoch, shard_batches(out, self.rank, self.world_size))
        return self._made[1]

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())


class BucketBatchSampler(_EpochBatches):
    def __init__(self, lengths: np.ndarray, indices: np.ndarray, batch_size: int | None = 16,
                 max_frames: int | None = None, num_buckets: int = 10, shuffle: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if batch_size is None and max_frames is None:
            raise ValueError("give batch_size or max_frames")
        self.lengths = np.asarray(lengths)
        self.indices = np.asarray(indices)
        self.batch_size, self.max_frames = batch_size, max_frames
        self.num_buckets = max(1, num_buckets)
        self.shuffle = shuffle
        self._init_epochs(seed, rank, world_size)

    def _make(self, rng: np.random.Generator) -> list[list[int]]:
        sorted_pos = np.argsort(self.lengths[self.indices], kind="stable")
        if not self.shuffle:
            return make_batches(self.lengths, self.indices, self.batch_size, self.max_frames, sorted_pos)
        out = []
        for bucket in np.array_split(sorted_pos, self.num_buckets):
            if len(bucket):
                out.extend(make_batches(self.lengths, self.indices, self.batch_size, self.max_frames,
                                        rng.permutation(bucket)))
        perm = rng.permutation(len(out))
        return [out[i] for i in perm]


class SortedRunBatchSampler(_EpochBatches):
    """Batches of consecutive utterances in dump order (longest first, ties by index): each batch is one contiguous
    range of a teacher cache, so reading its targets is one read per stored array.

    Each epoch shifts the batch boundaries by a random offset and shuffles the batch order, both from (seed,
    epoch). The order is computed from lengths alone, so online distillation sees the very same batches.

    `sampled` (bool per entry of `indices`) marks utterances of which each epoch uses a fresh random
    `sampled_fraction` (untranscribed audio mixed in at a chosen ratio); the others are used every epoch.
    """

    def __init__(self, lengths: np.ndarray, indices: np.ndarray, batch_size: int | None = 16,
                 max_frames: int | None = None, seed: int = 0, rank: int = 0, world_size: int = 1,
                 sampled: np.ndarray | None = None, sampled_fraction: float = 1.0):
        self.lengths, self.indices = np.asarray(lengths), np.asarray(indices)
        self.order = np.argsort(-self.lengths[self.indices], kind="stable")
        self.batch_size, self.max_frames = batch_size, max_frames
        self.sampled = None if sampled is None or sampled_fraction >= 1 else np.asarray(sampled, dtype=bool)
        self.sampled_fraction = sampled_fraction
        self._init_epochs(seed, rank, world_size)

    def _make(self, rng: np.random.Generator) -> list[list[int]]:
        order = self.order
        if self.sampled is not None:
            pool = np.flatnonzero(self.sampled)
            take = pool[rng.permutation(len(pool))[:int(round(self.sampled_fraction * len(pool)))]]
            keep = ~self.sampled
            keep[take] = True
            order = order[keep[order]]
        shift = int(rng.integers(0, max(1, (self.batch_size or 8))))
        head = make_batches(self.lengths, self.indices, self.batch_size, self.max_frames, order[:shift])
        tail = make_batches(self.lengths, self.indices, self.batch_size, self.max_frames, order[shift:])
        out = head + tail
        return [out[i] for i in rng.permutation(len(out))]
