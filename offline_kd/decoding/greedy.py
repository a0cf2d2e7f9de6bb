"""Greedy CTC decoding: argmax per frame, collapse repeats, drop blanks (id 0)."""

from __future__ import annotations

import torch

from offline_kd.data.targets import collapse_best_path


def greedy_ids(log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """log_probs (T, B, V), lengths (B,) -> per utterance the collapsed token ids without blanks."""
    best = log_probs.argmax(-1).transpose(0, 1).cpu().numpy()          # (B, T)
    return [collapse_best_path(best[b, :n]).tolist() for b, n in enumerate(lengths.tolist())]
