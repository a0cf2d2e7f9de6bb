"""Learned linear projections from student hidden states to the teacher's hidden dimension (feature matching)."""

from __future__ import annotations

import torch
from torch import nn


class FeatureProjections(nn.Module):
    """One Linear(student width, teacher width) per mapped student layer; keys are student layer indices.
    `student_dims`: the student's `layer_dims()` ({layer: width}), or one width for every layer."""

    def __init__(self, layer_mapping: dict[int, int], student_dims: int | dict[int, int],
                 teacher_dims: dict[int, int]):
        super().__init__()
        self.layer_mapping = {int(s): int(t) for s, t in layer_mapping.items()}
        width = (lambda s: student_dims[s]) if isinstance(student_dims, dict) else (lambda s: student_dims)
        self.proj = nn.ModuleDict({str(s): nn.Linear(width(s), teacher_dims[t])
                                   for s, t in self.layer_mapping.items()})

    def forward(self, student_hidden: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """{student layer: (B, T, Hs)} -> {student layer: (B, T, Ht)}."""
        return {s: self.proj[str(s)](student_hidden[s]) for s in self.layer_mapping}
