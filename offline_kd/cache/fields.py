"""The cache's per-frame fields as one table: field name -> codec -> array paths.

A split stores, per frame, the teacher's greedy path (`best_path`), its log-probs (`log_probs`, through the
log-prob codec) and the hidden states of each cached layer L (`hidden_{L}`, through that layer's codec). A codec
writes one or more arrays, each named by a suffix ("" or "/values", "/indices", ...): the array path is the field
name + the suffix. Everything that builds, parses or groups those paths (the layout, the writers on the host and
on the device, the reader, the device decoder, `cache info`, the seal, the dump's fitted state) goes through
`FieldTable`, so a new per-frame field is one entry here (docs/extending.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

BEST_PATH = "best_path"
LOG_PROBS = "log_probs"
HIDDEN_PREFIX = "hidden_"


def hidden_field(layer: int) -> str:
    return f"{HIDDEN_PREFIX}{int(layer)}"


def is_field_name(name: str) -> bool:
    """Whether a split's top-level array name is a per-frame field (not an index, checksum or record array)."""
    return name in (BEST_PATH, LOG_PROBS) or (name.startswith(HIDDEN_PREFIX) and name[len(HIDDEN_PREFIX):].isdigit())


@dataclass(frozen=True)
class Field:
    """One per-frame field: its name (the stem of its array paths), its codec (None: stored as it is, int32) and
    the teacher layer it holds (hidden states only)."""
    name: str
    codec: Any = None
    layer: Optional[int] = None

    def arrays(self) -> list[tuple[str, tuple, str, bool]]:
        """(path, per-frame shape, dtype, stored component-major) of each array of this field."""
        if self.codec is None:
            return [(self.name, (), "int32", False)]
        return [(self.name + a.suffix, a.shape, a.dtype, a.transpose) for a in self.codec.arrays()]

    def owns(self, path: str) -> bool:
        return path == self.name or path.startswith(self.name + "/")

    def part(self, arrays: dict) -> dict:
        """{path: array} of a split -> {suffix: array} of this field's arrays (what its codec decodes)."""
        return {path[len(self.name):]: a for path, a in arrays.items() if self.owns(path)}

    def join(self, codes: dict) -> dict:
        """{suffix: array} (a codec's encode output) -> {path: array}."""
        return {self.name + suffix: a for suffix, a in codes.items()}


class FieldTable:
    """The per-frame fields of a cache: best_path, log_probs (its codec), hidden_{L} per cached layer (theirs)."""

    def __init__(self, log_prob_codec, hidden_codecs: dict):
        self.log_probs = Field(LOG_PROBS, log_prob_codec)
        self.hidden = {int(L): Field(hidden_field(L), c, int(L)) for L, c in sorted(hidden_codecs.items())}
        self.fields = [Field(BEST_PATH), self.log_probs, *self.hidden.values()]

    # ------------------------------------------------------------------------------------------- paths
    def arrays(self) -> list[tuple[str, tuple, str, bool]]:
        """All per-frame arrays of a split, as (path, per-frame shape, dtype, stored component-major)."""
        return [a for f in self.fields for a in f.arrays()]

    def paths(self) -> list[str]:
        return [p for p, *_ in self.arrays()]

    def field_of(self, path: str) -> Optional[Field]:
        return next((f for f in self.fields if f.owns(path)), None)

    def select(self, arrays: dict, layers=None) -> dict:
        """The arrays of best_path, log_probs and of the hidden layers in `layers` (all with None)."""
        keep = [f for f in self.fields if f.layer is None or layers is None or f.layer in layers]
        return {p: a for p, a in arrays.items() if any(f.owns(p) for f in keep)}

    # ------------------------------------------------------------------------------------ on the host
    def encode(self, log_probs: np.ndarray, best_path: np.ndarray, hidden: dict) -> dict:
        """(F, V) log-probs, (F,) best path, {L: (F, H)} -> {path: (F, ...) codes}."""
        enc = {BEST_PATH: np.asarray(best_path).astype(np.int32)}
        enc.update(self.log_probs.join(self.log_probs.codec.encode(log_probs)))
        for L, f in self.hidden.items():
            enc.update(f.join(f.codec.encode(hidden[L])))
        return enc

    def decode(self, arrays: dict, layers=None) -> dict:
        """{path: codes} -> {"log_probs": (F, V), "best_path": (F,), "hidden": {L: (F, H)}} (float32), the hidden
        layers in `layers` only (all with None)."""
        return {"log_probs": self.log_probs.codec.decode(self.log_probs.part(arrays)),
                "best_path": arrays[BEST_PATH],
                "hidden": {L: f.codec.decode(f.part(arrays)) for L, f in self.hidden.items()
                           if layers is None or L in layers}}

    # ---------------------------------------------------------------------------------- on the device
    def device_states(self, device) -> dict:
        """Each codec's fitted state on `device`: {field name: state}."""
        return {f.name: f.codec.device_state(device) for f in self.fields if f.codec is not None}

    def encode_torch(self, log_probs, hidden: dict, states: dict) -> dict:
        """(F, V) log-probs and {L: (F, H)} on a device -> {path: codes} on it (best_path: the argmax)."""
        codes = {BEST_PATH: log_probs.argmax(-1)}
        codes.update(self.log_probs.join(self.log_probs.codec.encode_torch(log_probs, states[LOG_PROBS])))
        for L, f in self.hidden.items():
            codes.update(f.join(f.codec.encode_torch(hidden[L], states[f.name])))
        return codes

    def decode_torch(self, codes: dict, states: dict) -> tuple:
        """{path: codes on a device} -> (log-probs (F, V), {L: (F, H)}) float32, hidden layers whose codes are
        present."""
        lp = self.log_probs.codec.decode_torch(self.log_probs.part(codes), states[LOG_PROBS])
        hidden = {}
        for L, f in self.hidden.items():
            part = f.part(codes)
            if part:
                hidden[L] = f.codec.decode_torch(part, states[f.name])
        return lp, hidden
