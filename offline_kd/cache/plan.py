"""The dump plan of one cached split: which utterances, in which order, in which batches, at which frame offsets.

It is a pure function of the corpus and the dump config (offline_kd.distillation.dump builds it), so an
interrupted dump resumes on exactly the same batches; the store lays a split out from it and the metadata's
identity hashes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SplitPlan:
    reader: Any                  # the corpus split as the teacher sees it (a SplitReader, or a ViewReader of one)
    batches: list                # [[corpus index, ...], ...] in dump order (longest first)
    order: list                  # corpus indices in dump order: the batches concatenated
    offsets: np.ndarray          # (N + 1,) int64 output-frame offsets in dump order
    hashes: list                 # feature sha256 per utterance, in dump order

    @property
    def utterance_ids(self) -> list[str]:
        return [self.reader.utterance_ids[i] for i in self.order]

    @property
    def input_frames(self) -> np.ndarray:
        return self.reader.lengths[self.order]
