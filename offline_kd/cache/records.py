"""Per-utterance records of a split: a fixed number of weighted slots per utterance, each a variable-length vector.

A record type `name` with `slots` slots per utterance stores, for a split of U utterances in dump order:

    {split}/{name}_offset   int64   (slots * U + 1,)  slot j of utterance i: values [offset[i*slots+j], offset[i*slots+j+1])
    {split}/{name}_{values} <dtype> (M,)              the slots' values, concatenated (an absent slot is empty)
    {split}/{name}_weight   float32 (U, slots)        each slot's weight (absent: 0)
    split attribute {name} = slots

They are ordinary arrays of the split: sealed with the rest of the cache (offline_kd.cache.integrity), listed by
`cache info`, read back whole into memory by `RecordReader`. The LM N-best (`cache/lm_targets.py`: the teacher's N
best hypotheses per utterance, token ids weighted by their posterior) is one; pseudo-labels imported from another
system would be another.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_CHUNK_ROWS = 1 << 20


@dataclass(frozen=True)
class RecordArray:
    name: str                 # e.g. "lm_nbest"
    values: str = "values"    # the name of the values array's suffix, e.g. "tokens"
    dtype: str = "int32"

    @property
    def arrays(self) -> tuple[str, str, str]:
        return f"{self.name}_offset", f"{self.name}_{self.values}", f"{self.name}_weight"

    def present(self, group) -> bool:
        return self.name in group.attrs

    def build(self, slots: list[list[np.ndarray]], weights: np.ndarray) -> dict[str, np.ndarray]:
        """Per utterance its `slots` value vectors (shorter lists: absent slots), and (U, slots) weights -> the
        record's arrays."""
        u, n = weights.shape
        offsets, values = [0], []
        for i in range(u):
            for j in range(n):
                v = np.asarray(slots[i][j] if j < len(slots[i]) else [], dtype=self.dtype)
                values.append(v)
                offsets.append(offsets[-1] + len(v))
        off_name, val_name, w_name = self.arrays
        return {off_name: np.asarray(offsets, dtype=np.int64),
                val_name: np.concatenate(values + [np.zeros(0, self.dtype)]).astype(self.dtype),
                w_name: np.asarray(weights, dtype=np.float32)}

    def write(self, group, arrays: dict[str, np.ndarray], slots: int) -> None:
        """Store a split's record arrays (`build`'s output) in its group, opened for writing."""
        for key in self.arrays:
            arr = arrays[key]
            chunks = (max(1, min(arr.shape[0], _CHUNK_ROWS)),) + arr.shape[1:]       # (an empty array: one chunk)
            a = group.create_array(key, shape=arr.shape, dtype=arr.dtype, chunks=chunks, overwrite=True)
            if arr.size:
                a[...] = arr
        group.attrs.update({self.name: int(slots)})

    def drop(self, group) -> bool:
        """Remove a split's records (arrays and attribute); -> whether it had any."""
        had = [k for k in self.arrays if k in group]
        for k in had:
            del group[k]
        if self.name in group.attrs:
            del group.attrs[self.name]
            had.append(self.name)
        return bool(had)

    def reader(self, group) -> "RecordReader":
        return RecordReader(self, group)


class RecordReader:
    """A split's records in memory: `get(position)` -> [(values, weight), ...] of the slots with weight > 0."""

    def __init__(self, record: RecordArray, group):
        off_name, val_name, w_name = record.arrays
        if off_name not in group:
            raise KeyError(group.basename)
        self.n = int(group.attrs[record.name])
        self.offset = group[off_name][:]
        self.values = group[val_name][:]
        self.weight = group[w_name][:]

    def get(self, position: int) -> list[tuple[np.ndarray, float]]:
        out = []
        for j in range(self.n):
            w = float(self.weight[position, j])
            if w > 0:
                k = position * self.n + j
                out.append((self.values[self.offset[k]:self.offset[k + 1]].astype(np.int64), w))
        return out
