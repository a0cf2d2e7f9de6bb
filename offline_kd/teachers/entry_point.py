"""A teacher from the user's own code (`dump.teacher: {entry_point: "module:function", args: {...}}`).

`function(**args)` is imported and called; what it returns must offer (the dump reads nothing else):

    tokens        its vocabulary, a sequence of strings: class i is tokens[i]
    blank         the blank's class index
    input_dim     feature dimension it reads
    subsampling   input frames per output frame (output lengths are ceil(T / subsampling))
    layer_dims()  {layer: width} of the layers whose hidden states it can return (1-based)
    forward_with_hidden_states(x (B, T, D) float32, lengths (B,) int64, layers)
                  -> (log_probs (T', B, V) at temperature 1, output lengths (B,), {layer: (B, T', width)})
    state_dict()  its weights (a torch nn.Module has one): their sha256 is the teacher's identity in the cache

and optionally `word_delimiter` (its word-separator token) and `special_tokens` (tokens to drop), which the
vocabulary alignment reads (teachers/alignment.py).

A teacher that reads audio (NeMo, SpeechBrain, a Hugging Face model of one's own) declares `input_kind: waveform`,
in the spec (`{entry_point: ..., input_kind: waveform, sample_rate: 16000}`) or as attributes of what it returns.
It then needs no `input_dim` or `subsampling` but

    sample_rate          the rate it reads (the corpus's kept audio must be at it: `data import --keep-audio
                         --sample-rate N`)
    frame_shift_samples  samples per output frame (320: 20 ms at 16 kHz)
    forward_with_hidden_states(audio (B, N) float32 in [-1, 1), zero-padded, lengths (B,) samples, layers)
                  -> (log_probs (T', B, V), output lengths (B,), {layer: (B, T', width)})

and optionally `output_lengths(samples (B,) int64) -> frames (B,)`, with which every utterance's frame count is
checked before anything is written. Its frames are brought to the student's as a Hugging Face teacher's are.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from offline_kd.errors import OfflineKDError, TeacherForwardError

REQUIRED = ("tokens", "blank", "input_dim", "subsampling", "layer_dims", "forward_with_hidden_states", "state_dict")
REQUIRED_WAVEFORM = ("tokens", "blank", "sample_rate", "frame_shift_samples", "layer_dims",
                     "forward_with_hidden_states", "state_dict")
INPUT_KINDS = ("features", "waveform")


def call_entry_point(spec: dict, where: str):
    module, fn = spec["entry_point"].split(":")
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001  (any failure of the user's module is reported on one line)
        raise OfflineKDError(f"{where}: cannot import {module} ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:200]}); is it on PYTHONPATH?") from None
    target = getattr(mod, fn, None)
    if not callable(target):
        raise OfflineKDError(f"{where}: {module} has no function {fn}")
    try:
        return target(**spec["args"])
    except OfflineKDError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise OfflineKDError(f"{where}: {spec['entry_point']}(**args) failed ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:200]})") from None


class EntryPointTeacher(nn.Module):
    """A teacher from the user's code seen as a `CTCModel`: the members it lacks are derived, and every forward is
    checked (shapes, lengths, finite values) so that a wrong teacher fails with a message, not a cache."""

    model_type = "entry_point"

    def __init__(self, obj, spec: dict, where: str):
        super().__init__()
        self.input_kind = str(spec.get("input_kind") or getattr(obj, "input_kind", "features"))
        if self.input_kind not in INPUT_KINDS:
            raise OfflineKDError(f"{where}: input_kind must be one of {', '.join(INPUT_KINDS)}, got "
                                 f"{self.input_kind!r}")
        waveform = self.input_kind == "waveform"
        required = REQUIRED_WAVEFORM if waveform else REQUIRED
        missing = [m for m in required if not hasattr(obj, m) and not (m == "sample_rate" and spec.get(m))]
        if missing:
            raise OfflineKDError(f"{where}: what {spec['entry_point']} returned lacks {', '.join(missing)} (a "
                                 f"teacher that reads {'audio' if waveform else 'features'} needs "
                                 f"{', '.join(required)}; docs/teachers.md)")
        self.where, self.spec = where, spec
        if isinstance(obj, nn.Module):
            self.inner = obj                          # a submodule: .to(device) and .eval() reach it
        else:
            object.__setattr__(self, "_plain", obj)   # manages its own device
        tokens = [str(t) for t in obj.tokens]
        if len(tokens) < 2 or len(set(tokens)) != len(tokens):
            raise OfflineKDError(f"{where}: the teacher's tokens must be at least 2 distinct strings")
        self._tokens = tuple(tokens)
        self.word_delimiter = getattr(obj, "word_delimiter", None)
        self.special = tuple(str(t) for t in getattr(obj, "special_tokens", ()) or ())
        self._blank = int(obj.blank)
        if not 0 <= self._blank < len(tokens):
            raise OfflineKDError(f"{where}: blank {self._blank} is not a class of its {len(tokens)} tokens")
        if waveform:
            self._input_dim, self._subsampling = None, None
            self.sample_rate = int(spec.get("sample_rate") or obj.sample_rate)
            self.frame_shift_samples = int(obj.frame_shift_samples)
            if self.sample_rate <= 0 or self.frame_shift_samples <= 0:
                raise OfflineKDError(f"{where}: sample_rate and frame_shift_samples must be > 0, got "
                                     f"{self.sample_rate} and {self.frame_shift_samples}")
        else:
            self._input_dim, self._subsampling = int(obj.input_dim), int(obj.subsampling)
        dims = obj.layer_dims()
        if not isinstance(dims, dict) or not dims or not all(int(k) >= 1 and int(v) >= 1 for k, v in dims.items()):
            raise OfflineKDError(f"{where}: layer_dims() must be a non-empty {{layer >= 1: width >= 1}}, got {dims!r}")
        self._dims = {int(k): int(v) for k, v in dims.items()}

    # ------------------------------------------------------------------------------------------ CTCModel
    @property
    def _obj(self):
        return self.inner if "inner" in self._modules else self._plain

    @property
    def tokens(self) -> tuple:
        return self._tokens

    @property
    def input_dim(self):
        return self._input_dim          # None for a teacher that reads waveforms

    #: what validation names when the corpus's features are not what the teacher reads
    input_dim_key = "the teacher's input_dim"

    @property
    def output_lengths(self):
        """The teacher's own `output_lengths(samples)` (a waveform teacher's, if it has one), else None."""
        fn = getattr(self._obj, "output_lengths", None)
        return (lambda n: fn(n).to(torch.int64)) if callable(fn) else None

    @property
    def num_classes(self) -> int:
        return len(self._tokens)

    @property
    def blank(self) -> int:
        return self._blank

    @property
    def subsampling(self) -> int:
        return self._subsampling

    @property
    def num_layers(self) -> int:
        return max(self._dims)

    def layer_dims(self) -> dict[int, int]:
        return dict(self._dims)

    def describe(self) -> dict:
        return {"entry_point": self.spec["entry_point"], "args": self.spec["args"]}

    def state_dict(self, *args, **kwargs):
        return self._obj.state_dict(*args, **kwargs)

    def train(self, mode: bool = True):
        super().train(mode)
        if "inner" not in self._modules and callable(getattr(self._plain, "train", None)):
            self._plain.train(mode)
        return self

    def forward_with_hidden_states(self, x: torch.Tensor, lengths: torch.Tensor, return_layer_indices=None):
        layers = sorted(set(return_layer_indices or []))
        bad = [L for L in layers if L not in self._dims]
        if bad:
            raise OfflineKDError(f"{self.where}: the teacher has no layer {bad[0]} (it exposes "
                                 f"{', '.join(map(str, sorted(self._dims)))})")
        try:
            out = self._obj.forward_with_hidden_states(x, lengths, layers)
        except OfflineKDError:
            raise
        except Exception as exc:  # noqa: BLE001  (the user's code failed: one line, the caller names the batch)
            raise TeacherForwardError(f"{self.where}: {self.spec['entry_point']}'s forward_with_hidden_states "
                                      f"failed ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
        if not (isinstance(out, (tuple, list)) and len(out) == 3):
            raise OfflineKDError(f"{self.where}: forward_with_hidden_states must return (log_probs, output_lengths, "
                                 f"hidden), got {type(out).__name__}")
        lp, out_len, hidden = out
        b = x.shape[0]
        if self.input_kind == "waveform":
            expect, how = self._waveform_lengths(lengths, out_len, b)
        else:
            expect = -(-lengths.to(torch.int64) // self._subsampling)
            how = f"ceil(lengths / {self._subsampling})"
        t_out = int(expect.max()) if b else 0
        if not isinstance(lp, torch.Tensor) or lp.dim() != 3 or lp.shape[1] != b or lp.shape[2] != self.num_classes \
                or lp.shape[0] < t_out:
            raise OfflineKDError(f"{self.where}: log_probs must be (T', {b}, {self.num_classes}) with T' >= {t_out}, "
                                 f"got {tuple(lp.shape) if isinstance(lp, torch.Tensor) else type(lp).__name__}")
        if not isinstance(out_len, torch.Tensor) or out_len.shape != (b,) or not torch.equal(
                out_len.to(expect.device, torch.int64), expect):
            raise OfflineKDError(f"{self.where}: output lengths must be {how} = "
                                 f"{expect.tolist()[:4]}..., got "
                                 f"{out_len.tolist()[:4] if isinstance(out_len, torch.Tensor) else out_len}")
        if not isinstance(hidden, dict) or sorted(hidden) != layers:
            raise OfflineKDError(f"{self.where}: hidden states must be returned for exactly the layers asked "
                                 f"({layers}), got {sorted(hidden) if isinstance(hidden, dict) else hidden!r}")
        for L, h in hidden.items():
            if not isinstance(h, torch.Tensor) or h.shape[:2] != (b, lp.shape[0]) or h.shape[2] != self._dims[L]:
                raise OfflineKDError(f"{self.where}: hidden state of layer {L} must be ({b}, {lp.shape[0]}, "
                                     f"{self._dims[L]}), got {tuple(h.shape) if isinstance(h, torch.Tensor) else h}")
        for name, t in [("log_probs", lp)] + [(f"layer {L}", h) for L, h in hidden.items()]:
            valid = t if name != "log_probs" else t[:t_out]
            if not torch.isfinite(valid).all():
                raise OfflineKDError(f"{self.where}: the teacher's {name} are not finite (NaN or Inf)")
        return lp, out_len, hidden

    def _waveform_lengths(self, samples: torch.Tensor, out_len, b: int):
        """(the output lengths a waveform teacher must return, how they are computed): its own
        `output_lengths(samples)` where it has one, else what it returned (checked for shape only)."""
        fn = self.output_lengths
        if fn is not None:
            return fn(samples.to(torch.int64)).to(torch.int64), "its output_lengths(samples)"
        if not isinstance(out_len, torch.Tensor) or out_len.shape != (b,):
            raise OfflineKDError(f"{self.where}: forward_with_hidden_states must return output lengths of shape "
                                 f"({b},), got {out_len!r}"[:300])
        return out_len.to(torch.int64), "(B,) frame counts"

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        lp, out_len, _ = self.forward_with_hidden_states(x, lengths, None)
        return lp, out_len
