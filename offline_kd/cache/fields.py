"""The cache's per-frame fields as one table: field name -> codec -> array paths.

A split stores, per frame, the teacher's greedy path (`best_path`), its log-probs (`log_probs`, through the
log-prob codec) and the hidden states of each cached layer L (`hidden_{L}`, through that layer's codec). A codec
writes one or more arrays, each named by a suffix ("" or "/values", "/indices", ...): the array path is the field
name + the suffix. Everything that builds, parses or groups those paths (the layout, the writers on the host and
on the device, the reader, the device decoder, `cache info`, the seal, the dump's fitted state) goes through
`FieldTable`.

Further per-frame fields computed from the teacher's log-probs (a per-frame entropy, say) are `FrameField`s: one
`register_field(FrameField(name, compute, dtype))` call, and a dump with `dump.fields: [name]` stores them (the
metadata records each one's name, dtype and shape, so any reader decodes them without the function). The writer,
checksums, seal, `cache verify`, reader, `targets(utt_id).fields`, `collate_frames`, the training batches
(`TeacherTargets.fields`) and the loss terms (`LossInputs.teacher_fields`) carry them (docs/extending.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch

from offline_kd.errors import OfflineKDError

BEST_PATH = "best_path"
LOG_PROBS = "log_probs"
HIDDEN_PREFIX = "hidden_"


def hidden_field(layer: int) -> str:
    return f"{HIDDEN_PREFIX}{int(layer)}"


def is_field_name(name: str) -> bool:
    """Whether a split's top-level array name is a per-frame field (not an index, checksum or record array)."""
    return name in (BEST_PATH, LOG_PROBS) or (name.startswith(HIDDEN_PREFIX) and name[len(HIDDEN_PREFIX):].isdigit())


@dataclass(frozen=True)
class FrameField:
    """A per-frame field computed at dump time from the teacher's (F, V) float32 log-probs: `compute` returns
    (F, *shape) values, stored as `dtype` without a codec."""
    name: str
    compute: Callable[[np.ndarray], np.ndarray]
    dtype: str = "float32"
    shape: tuple = ()

    def spec(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


FRAME_FIELDS: dict[str, FrameField] = {}
RESERVED = (BEST_PATH, LOG_PROBS, "hidden", "offset", "checksum", "utterance_id", "input_frames", "feature_sha256",
            "confidence", "lm_nbest", "member_probs", "member_confidence")
#: further fields the teacher itself gives beside its hidden states (by name), rather than a registered function:
#: an ensemble's `member_probs` (teachers/ensemble.py)
PROVIDED = ("member_probs",)


def register_field(field: FrameField) -> FrameField:
    """Make `field` available to `dump.fields` (a name that is not a split's own array, nor `hidden_*`)."""
    if field.name in RESERVED or field.name.startswith(HIDDEN_PREFIX) or field.name.startswith("_") \
            or not field.name.replace("_", "").isalnum():
        raise ValueError(f"register_field: {field.name!r} is not a free field name")
    FRAME_FIELDS[field.name] = field
    return field


def frame_field_specs(names: list, where: str = "dump.fields") -> list[dict]:
    """The specs ([{name, dtype, shape}]) of the registered fields `names`; an unknown name is a one-line error."""
    unknown = [n for n in names if n not in FRAME_FIELDS]
    if unknown:
        raise OfflineKDError(f"{where}: {', '.join(map(repr, unknown))} is not a registered per-frame field "
                             f"(registered: {', '.join(sorted(FRAME_FIELDS)) or 'none'}; register_field in "
                             f"offline_kd.cache.fields, imported before the dump)")
    return [FRAME_FIELDS[n].spec() for n in names]


def extra_field_specs(codecs: dict) -> list[dict]:
    """The further per-frame fields a cache's metadata (`codecs["fields"]`) records: [{name, dtype, shape}]."""
    return list((codecs or {}).get("fields") or [])


@dataclass(frozen=True)
class Field:
    """One per-frame field: its name (the stem of its array paths), its codec (None: stored as it is, `dtype`
    with per-frame `shape`) and the teacher layer it holds (hidden states only)."""
    name: str
    codec: Any = None
    layer: Optional[int] = None
    dtype: str = "int32"
    shape: tuple = ()

    def arrays(self) -> list[tuple[str, tuple, str, bool]]:
        """(path, per-frame shape, dtype, stored component-major) of each array of this field."""
        if self.codec is None:
            return [(self.name, tuple(self.shape), self.dtype, False)]
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
    """The per-frame fields of a cache: best_path, log_probs (its codec), hidden_{L} per cached layer (theirs), and
    the further fields `extra` ([{name, dtype, shape}], as the metadata records them)."""

    def __init__(self, log_prob_codec, hidden_codecs: dict, extra=()):
        self.log_probs = Field(LOG_PROBS, log_prob_codec)
        self.hidden = {int(L): Field(hidden_field(L), c, int(L)) for L, c in sorted(hidden_codecs.items())}
        self.extra = [Field(e["name"], None, None, e["dtype"], tuple(e["shape"])) for e in extra]
        self.fields = [Field(BEST_PATH), self.log_probs, *self.hidden.values(), *self.extra]

    def _computed(self, log_probs: np.ndarray, given: Optional[dict] = None) -> dict:
        """{name: (F, ...) values} of the further fields: those the teacher gave (`given`, by name: PROVIDED),
        the others computed from (F, V) log-probs by their registered functions."""
        out = {}
        for f in self.extra:
            if f.name in PROVIDED:
                if not given or f.name not in given:
                    raise OfflineKDError(f"cache field '{f.name}': the teacher gave no values for it (internal error)")
                out[f.name] = np.asarray(given[f.name]).astype(f.dtype)
                continue
            if f.name not in FRAME_FIELDS:
                raise OfflineKDError(f"cache field '{f.name}': no function computes it in this process (register it "
                                     f"with offline_kd.cache.fields.register_field before the dump)")
            out[f.name] = np.asarray(FRAME_FIELDS[f.name].compute(log_probs)).astype(f.dtype)
        return out

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
        """(F, V) log-probs, (F,) best path, {L: (F, H)} (and the PROVIDED fields by name) -> {path: (F, ...)
        codes}."""
        enc = {BEST_PATH: np.asarray(best_path).astype(np.int32)}
        enc.update(self.log_probs.join(self.log_probs.codec.encode(log_probs)))
        for L, f in self.hidden.items():
            enc.update(f.join(f.codec.encode(hidden[L])))
        enc.update(self._computed(np.asarray(log_probs, dtype=np.float32), hidden))
        return enc

    def decode(self, arrays: dict, layers=None) -> dict:
        """{path: codes} -> {"log_probs": (F, V), "best_path": (F,), "hidden": {L: (F, H)}} (float32), the hidden
        layers in `layers` only (all with None), and each further field by its name."""
        return {"log_probs": self.log_probs.codec.decode(self.log_probs.part(arrays)),
                "best_path": arrays[BEST_PATH],
                "hidden": {L: f.codec.decode(f.part(arrays)) for L, f in self.hidden.items()
                           if layers is None or L in layers},
                **{f.name: arrays[f.name] for f in self.extra}}

    # ---------------------------------------------------------------------------------- on the device
    def device_states(self, device) -> dict:
        """Each codec's fitted state on `device`: {field name: state}."""
        return {f.name: f.codec.device_state(device) for f in self.fields if f.codec is not None}

    def encode_torch(self, log_probs, hidden: dict, states: dict) -> dict:
        """(F, V) log-probs and {L: (F, H)} (and the PROVIDED fields by name) on a device -> {path: codes} on it
        (best_path: the argmax)."""
        codes = {BEST_PATH: log_probs.argmax(-1)}
        codes.update(self.log_probs.join(self.log_probs.codec.encode_torch(log_probs, states[LOG_PROBS])))
        for L, f in self.hidden.items():
            codes.update(f.join(f.codec.encode_torch(hidden[L], states[f.name])))
        if self.extra:          # computed on the host by their numpy functions
            given = {k: hidden[k].float().cpu().numpy() for k in PROVIDED if k in hidden}
            codes.update({k: torch.from_numpy(v).to(log_probs.device)
                          for k, v in self._computed(log_probs.float().cpu().numpy(), given).items()})
        return codes

    def decode_torch(self, codes: dict, states: dict) -> tuple:
        """{path: codes on a device} -> (log-probs (F, V), {L: (F, H)}) float32, hidden layers whose codes are
        present (the further fields travel as they are stored: `codes[name]`)."""
        lp = self.log_probs.codec.decode_torch(self.log_probs.part(codes), states[LOG_PROBS])
        hidden = {}
        for L, f in self.hidden.items():
            part = f.part(codes)
            if part:
                hidden[L] = f.codec.decode_torch(part, states[f.name])
        return lp, hidden
