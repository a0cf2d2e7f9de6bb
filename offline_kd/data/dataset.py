"""Map-style dataset over one split, and the collate that pads a batch.

`SpeechDataset[i]` returns features, label ids and, when a `targets` reader is given (the teacher cache), the
cached teacher outputs of the same utterance, joined by utterance id. `collate` pads every time-major field with
zeros and returns lengths; batches are therefore `features (B, T, D)`, `feature_lengths (B,)`, `labels (sum L,)`,
`label_lengths (B,)`, and for cached targets `teacher_log_probs (B, T', V)`, `teacher_hidden {layer: (B, T', H)}`,
`teacher_lengths (B,)`.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from offline_kd.data.corpus import SplitReader
from offline_kd.data.vocab import Vocabulary


class SpeechDataset(Dataset):
    def __init__(self, reader: SplitReader, vocab: Vocabulary,
                 targets: Optional[Callable[[str], dict]] = None):
        self.reader = reader
        self.vocab = vocab
        self.targets = targets

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int) -> dict:
        utt = self.reader.utterance_ids[i]
        item = {
            "index": i,
            "utterance_id": utt,
            "features": torch.from_numpy(np.ascontiguousarray(self.reader.features(i))),
            "labels": torch.tensor(self.vocab.encode(self.reader.transcripts[i]), dtype=torch.long),
        }
        if self.targets is not None:
            item.update(self.targets(utt))
        return item


def pad_time(tensors: list[torch.Tensor]) -> torch.Tensor:
    """list of (T_i, ...) -> (B, max T, ...) zero-padded."""
    return torch.nn.utils.rnn.pad_sequence(tensors, batch_first=True)


def collate(items: list[dict]) -> dict:
    batch = {
        "indices": [it["index"] for it in items],
        "utterance_ids": [it["utterance_id"] for it in items],
        "features": pad_time([it["features"] for it in items]),
        "feature_lengths": torch.tensor([len(it["features"]) for it in items], dtype=torch.long),
        "labels": torch.cat([it["labels"] for it in items]),
        "label_lengths": torch.tensor([len(it["labels"]) for it in items], dtype=torch.long),
    }
    if "teacher_log_probs" in items[0]:
        batch["teacher_log_probs"] = pad_time([it["teacher_log_probs"] for it in items])
        batch["teacher_lengths"] = torch.tensor([len(it["teacher_log_probs"]) for it in items], dtype=torch.long)
        batch["teacher_hidden"] = {layer: pad_time([it["teacher_hidden"][layer] for it in items])
                                   for layer in items[0]["teacher_hidden"]}
        batch["teacher_tokens"] = torch.cat([it["teacher_tokens"] for it in items])
        batch["teacher_token_lengths"] = torch.tensor([len(it["teacher_tokens"]) for it in items], dtype=torch.long)
    return batch
