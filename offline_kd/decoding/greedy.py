"""Greedy CTC decoding: argmax per frame, collapse repeats, drop blanks (id 0)."""

from __future__ import annotations

import torch


def greedy_ids(log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """log_probs (T, B, V), lengths (B,) -> per utterance the collapsed token ids without blanks."""
    best = log_probs.argmax(-1).transpose(0, 1).cpu()          # (B, T)
    out = []
    for b, n in enumerate(lengths.tolist()):
        seq = best[b, :n]
        if n == 0:
            out.append([])
            continue
        keep = torch.ones(n, dtype=torch.bool)
        keep[1:] = seq[1:] != seq[:-1]
        out.append([int(t) for t in seq[keep & (seq != 0)]])
    return out
