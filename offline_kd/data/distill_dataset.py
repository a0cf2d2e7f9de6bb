"""Batch-level dataset joining corpus features with cached teacher targets by utterance id.

`DistillBatchDataset[batch_indices]` returns a whole padded batch. Cached targets of the batch are read as
contiguous runs of cache positions (with `SortedRunBatchSampler` a batch is one run, hence one read per stored
array), decoded by the cache's own codecs, and padded like the features. Memory holds only the batches in flight,
whatever the cache size; the batch's `teacher` entry is a `TeacherTargets`. The `targets` object is a cache split (see offline_kd.cache.reader.CacheSplit); with
`targets=None` the dataset yields features and labels only (online distillation).
"""

from __future__ import annotations

import numpy as np
import torch

from offline_kd.data.corpus import SplitReader
from offline_kd.data.dataset import SpeechDataset, collate, pad_time
from offline_kd.data.targets import TeacherTargets
from offline_kd.data.vocab import Vocabulary


class DistillBatchDataset(torch.utils.data.Dataset):
    def __init__(self, reader: SplitReader, vocab: Vocabulary, targets=None, layers=None):
        self.items = SpeechDataset(reader, vocab)
        self.reader = reader
        self.targets = targets
        self.layers = set(layers or [])
        if targets is not None:
            self._pos = {i: targets.position.get(u) for i, u in enumerate(reader.utterance_ids)}

    def __len__(self) -> int:
        return len(self.reader)

    def _cached(self, indices: list[int]) -> list[dict]:
        pos = np.array([self._pos[i] for i in indices], dtype=np.int64)
        order = np.argsort(pos)
        out: list[dict | None] = [None] * len(indices)
        run_start = 0
        sorted_pos = pos[order]
        # split the sorted positions into contiguous runs and read each run once
        for k in range(1, len(sorted_pos) + 1):
            if k == len(sorted_pos) or sorted_pos[k] != sorted_pos[k - 1] + 1:
                lo, hi = int(sorted_pos[run_start]), int(sorted_pos[k - 1]) + 1
                for j, item in enumerate(self.targets.read_range(lo, hi, self.layers)):
                    out[order[run_start + j]] = item
                run_start = k
        return out

    def __getitem__(self, indices: list[int]) -> dict:
        batch = collate([self.items[i] for i in indices])
        if self.targets is None:
            return batch
        cached = self._cached(list(indices))
        batch["teacher"] = TeacherTargets.from_best_paths(
            pad_time([torch.from_numpy(c["log_probs"]) for c in cached]).transpose(0, 1),
            torch.tensor([len(c["log_probs"]) for c in cached], dtype=torch.long),
            {L: pad_time([torch.from_numpy(c["hidden"][L]) for c in cached]) for L in sorted(self.layers)},
            [c["best_path"] for c in cached])
        return batch
