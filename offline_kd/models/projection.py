"""Learned linear projections from student hidden states to the teacher's hidden dimension (feature matching)."""

from __future__ import annotations

import torch
from torch import nn


class FeatureProjections(nn.Module):
    """One Linear(student_dim, teacher_dim) per mapped student layer; keys are student layer indices."""

    def __init__(self, layer_mapping: dict[int, int], student_dim: int, teacher_dims: dict[int, int]):
        super().__init__()
        self.layer_mapping = {int(s): int(t) for s, t in layer_mapping.items()}
        self.proj = nn.ModuleDict({str(s): nn.Linear(student_dim, teacher_dims[t])
                                   for s, t in self.layer_mapping.items()})

    def forward(self, student_hidden: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """{student layer: (B, T, Hs)} -> {student layer: (B, T, Ht)}."""
        return {s: self.proj[str(s)](student_hidden[s]) for s in self.layer_mapping}
