"""Map-style dataset over one split, and the collate that pads a batch.

`SpeechDataset[i]` returns features and label ids; `collate` pads with zeros and returns lengths: batches are
`features (B, T, D)`, `feature_lengths (B,)`, `labels (sum L,)`, `label_lengths (B,)`, and with `with_audio` (for a
teacher that reads waveforms) `audio (B, N)` float32 in [-1, 1) and `audio_lengths (B,)`. Cached teacher targets
are joined in offline_kd.data.distill_dataset.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from offline_kd.data.corpus import SplitReader
from offline_kd.data.vocab import Vocabulary


class SpeechDataset(Dataset):
    def __init__(self, reader: SplitReader, vocab: Vocabulary, with_audio: bool = False):
        self.reader = reader
        self.vocab = vocab
        self.with_audio = with_audio

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
        if self.with_audio:
            item["audio"] = torch.from_numpy(self.reader.audio(i).astype(np.float32) / 32768.0)
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
    if "audio" in items[0]:
        batch["audio"] = pad_time([it["audio"] for it in items])
        batch["audio_lengths"] = torch.tensor([len(it["audio"]) for it in items], dtype=torch.long)
    return batch


def utterance_batch(reader: SplitReader, i: int, with_audio: bool = False) -> dict:
    """A batch of one utterance (labels left empty: for a forward pass only)."""
    item = {"index": i, "utterance_id": reader.utterance_ids[i],
            "features": torch.from_numpy(np.ascontiguousarray(reader.features(i))),
            "labels": torch.zeros(0, dtype=torch.long)}
    if with_audio:
        item["audio"] = torch.from_numpy(reader.audio(i).astype(np.float32) / 32768.0)
    return collate([item])
