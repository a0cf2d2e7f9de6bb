"""Batch-level dataset joining corpus features with cached teacher targets by utterance id.

`DistillBatchDataset[batch_indices]` returns a whole padded batch. Cached targets of the batch are read as
contiguous runs of cache positions (with `SortedRunBatchSampler` a batch is one run, hence one read per stored
array), decoded by the cache's own codecs, and padded like the features. Memory holds only the batches in flight,
whatever the cache size; the batch's `teacher` entry is a `TeacherTargets`. The `targets` object is a cache split
(see offline_kd.cache.reader.CacheSplit); with `targets=None` the dataset yields features and labels only (online
distillation).

Untranscribed splits (`untranscribed=[(reader, targets), ...]`) follow the labelled split in one index space:
index `i` is the labelled split's utterance `i` for `i < len(reader)`, then each untranscribed split in turn
(`part_offsets`). Their utterances carry empty labels and `labelled = False` in the batch; the loss trains them on
the teacher's 1-best instead (`TeacherTargets.hard_labels`).

With `encoded=True` the batch's `teacher` entry is an `EncodedTargets`: the stored codes, checked but not decoded,
for the training process to decode on its device (`distill.decode_on`).
"""

from __future__ import annotations

import bisect

import numpy as np
import torch

from offline_kd.data.corpus import SplitReader
from offline_kd.data.dataset import SpeechDataset, collate, pad_time
from offline_kd.data.targets import EncodedTargets, TeacherTargets, best_tokens, host_tensor
from offline_kd.data.vocab import Vocabulary


CORE = ("log_probs", "best_path", "hidden")     # a decoded utterance's own keys; any other is a further field


class _Part:
    def __init__(self, reader: SplitReader, vocab: Vocabulary, targets, offset: int, with_audio: bool = False):
        self.reader, self.targets, self.offset = reader, targets, offset
        self.items = SpeechDataset(reader, vocab, with_audio)
        self.pos = [targets.position.get(u) for u in reader.utterance_ids] if targets is not None else None


class DistillBatchDataset(torch.utils.data.Dataset):
    def __init__(self, reader: SplitReader, vocab: Vocabulary, targets=None, layers=None, untranscribed=(),
                 encoded: bool = False, lm_nbest: bool = False, with_audio: bool = False):
        self.reader = reader
        self.lm_nbest = lm_nbest          # True: untranscribed utterances carry the cached LM N-best
        self.targets = targets
        self.encoded = encoded            # True: the batch carries the stored codes (EncodedTargets), not values
        self.layers = set(layers or [])
        self.parts = [_Part(reader, vocab, targets, 0, with_audio)]
        for r, t in untranscribed:
            self.parts.append(_Part(r, vocab, t, self.parts[-1].offset + len(self.parts[-1].reader), with_audio))
        self.part_offsets = [p.offset for p in self.parts]

    def __len__(self) -> int:
        return self.part_offsets[-1] + len(self.parts[-1].reader)

    @property
    def lengths(self) -> np.ndarray:
        """Input frames of every index (all parts, in index order)."""
        return np.concatenate([p.reader.lengths for p in self.parts])

    def _locate(self, index: int) -> tuple[_Part, int]:
        part = self.parts[bisect.bisect_right(self.part_offsets, index) - 1]
        return part, index - part.offset

    def _cached(self, located: list[tuple[_Part, int]]) -> list[dict]:
        out: list[dict | None] = [None] * len(located)
        for part in self.parts:
            mine = [(j, part.pos[i]) for j, (p, i) in enumerate(located) if p is part]
            if not mine:
                continue
            slots = np.array([j for j, _ in mine])
            pos = np.array([q for _, q in mine], dtype=np.int64)
            order = np.argsort(pos)
            sorted_pos = pos[order]
            run_start = 0
            # split the sorted positions into contiguous runs and read each run once
            for k in range(1, len(sorted_pos) + 1):
                if k == len(sorted_pos) or sorted_pos[k] != sorted_pos[k - 1] + 1:
                    lo, hi = int(sorted_pos[run_start]), int(sorted_pos[k - 1]) + 1
                    read = part.targets.read_range_codes if self.encoded else part.targets.read_range
                    for j, item in enumerate(read(lo, hi, self.layers)):
                        out[slots[order[run_start + j]]] = item
                    run_start = k
        return out

    def __getitem__(self, indices: list[int]) -> dict:
        located = [self._locate(int(i)) for i in indices]
        items = []
        for (part, i), g in zip(located, indices):
            item = part.items[i]
            item["index"] = int(g)
            items.append(item)
        batch = collate(items)
        batch["labelled"] = torch.tensor([p is self.parts[0] for p, _ in located], dtype=torch.bool)
        if self.targets is None:
            return batch
        cached = self._cached(located)
        nbest = None
        if self.lm_nbest:    # the untranscribed utterances' LM N-best (the labelled ones keep their reference)
            nbest = [None if p is self.parts[0] else p.targets.lm_nbest(p.pos[i]) for p, i in located]
        if self.encoded:
            batch["teacher"] = EncodedTargets(
                {k: host_tensor(np.concatenate([c[k] for c in cached])) for k in cached[0] if k != "best_path"},
                torch.tensor([len(c["best_path"]) for c in cached], dtype=torch.long),
                *best_tokens([c["best_path"] for c in cached]), nbest=nbest)
            return batch
        batch["teacher"] = TeacherTargets.from_best_paths(
            pad_time([torch.from_numpy(c["log_probs"]) for c in cached]).transpose(0, 1),
            torch.tensor([len(c["log_probs"]) for c in cached], dtype=torch.long),
            {L: pad_time([torch.from_numpy(c["hidden"][L]) for c in cached]) for L in sorted(self.layers)},
            [c["best_path"] for c in cached], nbest=nbest,
            fields={k: pad_time([torch.from_numpy(c[k]) for c in cached]) for k in cached[0] if k not in CORE})
        return batch
