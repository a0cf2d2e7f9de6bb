"""Map-style dataset over one split, and the collate that pads a batch.

`SpeechDataset[i]` returns features and label ids; `collate` pads with zeros and returns lengths: batches are
`features (B, T, D)`, `feature_lengths (B,)`, `labels (sum L,)`, `label_lengths (B,)`. Cached teacher targets are
joined in offline_kd.data.distill_dataset.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from offline_kd.data.corpus import SplitReader
from offline_kd.data.vocab import Vocabulary


class SpeechDataset(Dataset):
    def __init__(self, reader: SplitReader, vocab: Vocabulary):
        self.reader = reader
        self.vocab = vocab

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
    return batch
