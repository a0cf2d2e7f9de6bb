"""A teacher brought to the student's vocabulary and frame rate: `AlignedTeacher`.

Vocabulary (`VocabularyMap`). Each of the teacher's classes goes to at most one of the student's:

  - its blank to the student's blank (class 0), wherever the teacher keeps it (class 0, its pad id, the last);
  - a token the student also has, to that token;
  - its word delimiter (e.g. wav2vec2's `|`) to the student's word separator;
  - otherwise, with case folding, to the student token that differs only in case (`A` -> `a`);
  - its special tokens (`<s>`, `</s>`, `<unk>`: what the adapter declares) are dropped;
  - an explicit mapping file (`vocabulary_map`, YAML/JSON `{teacher token: student token, or null to drop}`)
    overrides any of these.

A teacher token left over is an error that names it. The student's distribution is the teacher's summed over the
classes mapped onto each student class (probability space), renormalised over what was kept; a student class that
no teacher class reaches gets probability FLOOR before renormalising. A one-to-one mapping is a permutation of the
log-probs, bit for bit. The KL of train-student is computed over this mapped distribution, which the cache stores.

Frame rate (`FrameAlignment`). The teacher's frames are brought to the student's: with the student's frame shift k
times the teacher's, k consecutive teacher frames become one (posteriors: each student frame takes one teacher
frame's whole distribution, so that CTC's spikes survive, `_spike_sources`; hidden states averaged, or stacked into
k times the width); with the teacher's k times the student's, each teacher frame is repeated k times. A ratio that
is neither an integer nor its inverse is an error. Then the lengths are
reconciled by one rule: the student's frame count is ceil(feature frames / student subsampling); extra teacher
frames at the end are dropped, missing ones repeat the last frame, and a difference of more than
`max_length_mismatch` frames (default 2) is an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from fractions import Fraction
from pathlib import Path
from typing import Optional

import torch
import yaml
from torch import nn

from offline_kd.data.vocab import Vocabulary
from offline_kd.errors import OfflineKDError

FLOOR = 1e-30          # probability of a student class that no teacher class reaches
SPIKES = "each emission of the teacher's 1-best at its own frame, the others the most blank frame of each group"
HIDDEN_POOLING = ("mean", "stack")


# ---------------------------------------------------------------------------------------------------- vocabulary
def _map_tokens(teacher_tokens, teacher_blank: int, student: Vocabulary, word_delimiter, special: tuple,
                explicit: dict, where: str):
    """Each teacher token's student class (None: dropped), by the first rule that applies: the explicit map, the
    blank, the same token, the word delimiter, the same token case-folded (one student token only), a special
    token (dropped). -> (targets, {rule: count}, the tokens no rule maps)."""
    s_index = {t: i for i, t in enumerate(student.tokens)}
    folded: dict[str, list[int]] = {}
    for i, t in enumerate(student.tokens):
        folded.setdefault(t.casefold(), []).append(i)
    target, how, missing = [], {"blank": 0, "same": 0, "delimiter": 0, "case_folded": 0, "explicit": 0,
                                "dropped": 0}, []
    for i, tok in enumerate(teacher_tokens):
        if tok in explicit:
            dest = explicit[tok]
            if dest is not None and dest not in s_index:
                raise OfflineKDError(f"{where}.vocabulary_map: {tok!r} -> {dest!r}, which is not a token of the "
                                     f"student's vocabulary")
            target.append(None if dest is None else s_index[dest])
            how["explicit" if dest is not None else "dropped"] += 1
        elif i == teacher_blank:
            target.append(0)
            how["blank"] += 1
        elif tok in s_index and s_index[tok] != 0:
            target.append(s_index[tok])
            how["same"] += 1
        elif word_delimiter is not None and tok == word_delimiter and student.word_separator is not None:
            target.append(s_index[student.word_separator])
            how["delimiter"] += 1
        elif len(folded.get(tok.casefold(), [])) == 1 and folded[tok.casefold()][0] != 0:
            target.append(folded[tok.casefold()][0])
            how["case_folded"] += 1
        elif tok in special:
            target.append(None)
            how["dropped"] += 1
        else:
            missing.append(tok)
    return target, how, missing


class VocabularyMap:
    """teacher class -> student class (or dropped), and the log-prob transform it implies."""

    def __init__(self, teacher_tokens, teacher_blank: int, student: Vocabulary, word_delimiter: Optional[str] = None,
                 special: tuple = (), mapping_file: Optional[str] = None, where: str = "teacher",
                 student_vocab_file: Optional[str] = None):
        self.student, self.teacher_blank = student, int(teacher_blank)
        explicit = _read_mapping(mapping_file, where) if mapping_file else {}
        unknown = sorted(set(explicit) - set(teacher_tokens))
        if unknown:
            raise OfflineKDError(f"{where}.vocabulary_map: {', '.join(map(repr, unknown[:5]))} "
                                 f"{'is' if len(unknown) == 1 else 'are'} not among the teacher's tokens")
        target, how, missing = _map_tokens(teacher_tokens, teacher_blank, student, word_delimiter, special,
                                           explicit, where)
        if missing:
            source = (f" ({student_vocab_file}: `data import` builds it from the transcripts it imports, where these "
                      f"do not occur)" if student_vocab_file else "")
            raise OfflineKDError(f"{where}: the teacher's tokens {', '.join(map(repr, missing[:8]))}"
                                 f"{f' (and {len(missing) - 8} more)' if len(missing) > 8 else ''} have no counterpart "
                                 f"in the student's vocabulary{source}; import the corpus again with `--vocab FILE` "
                                 f"listing them (e.g. the teacher's tokens), or map them (or null to drop them) in a "
                                 f"vocabulary_map file (docs/teachers.md)")
        self.target = target
        self.counts = how
        reached = {t for t in target if t is not None}
        self.unreached = [student.tokens[i] for i in range(len(student)) if i not in reached]
        self.dropped = [i for i, t in enumerate(target) if t is None]       # teacher classes mapped to nothing
        self.identity = target == list(range(len(student))) and len(teacher_tokens) == len(student)
        self.permutation = sorted(reached) == list(range(len(student))) and len(reached) == len(target)
        self.mapping_file = mapping_file
        if self.permutation:     # student class j <- teacher class inverse[j]
            inverse = [0] * len(student)
            for i, t in enumerate(target):
                inverse[t] = i
            self._gather = torch.tensor(inverse, dtype=torch.long)
        self._keep = torch.tensor([i for i, t in enumerate(target) if t is not None], dtype=torch.long)
        self._dest = torch.tensor([t for t in target if t is not None], dtype=torch.long)
        self._unreached = torch.tensor([i for i in range(len(student)) if i not in reached], dtype=torch.long)

    def record(self, teacher_tokens) -> dict:
        pairs = [[tok, None if t is None else self.student.tokens[t]] for tok, t in zip(teacher_tokens, self.target)]
        return {"kind": "identity" if self.identity else "permutation" if self.permutation else "merged",
                "counts": {k: v for k, v in self.counts.items() if v},
                "unreached": self.unreached, "mapping_file": self.mapping_file,
                "sha256": hashlib.sha256(json.dumps(pairs).encode()).hexdigest(), "pairs": pairs}

    def dropped_mass(self, log_probs: torch.Tensor) -> torch.Tensor:
        """(..., V_teacher) log-probs -> (...,) the probability on the classes this map drops."""
        idx = torch.tensor(self.dropped, dtype=torch.long, device=log_probs.device)
        return log_probs.double().index_select(-1, idx).exp().sum(-1)

    def apply(self, log_probs: torch.Tensor) -> torch.Tensor:
        """(..., V_teacher) log-probs -> (..., V_student)."""
        if self.identity:
            return log_probs
        if self.permutation:
            return log_probs.index_select(-1, self._gather.to(log_probs.device))
        # merged: per student class, the log of the summed probabilities of its teacher classes (float64: no
        # underflow above e^-700), renormalised over the kept classes; unreached classes get FLOOR
        lp = log_probs.double().index_select(-1, self._keep.to(log_probs.device))
        peak = lp.max(-1, keepdim=True).values
        p = torch.zeros(*lp.shape[:-1], len(self.student), device=lp.device, dtype=lp.dtype)
        p.index_add_(-1, self._dest.to(lp.device), (lp - peak).exp())
        out = p.log() - p.sum(-1, keepdim=True).log()
        if self.unreached:
            out[..., self._unreached.to(lp.device)] = math.log(FLOOR)
            out = out - math.log1p(FLOOR * len(self.unreached))
        return out.to(log_probs.dtype)


def _read_mapping(path: str, where: str) -> dict:
    if not Path(path).is_file():
        raise OfflineKDError(f"{where}.vocabulary_map: file not found: {path}")
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise OfflineKDError(f"{where}.vocabulary_map {path}: not YAML/JSON ({' '.join(str(exc).split())[:160]})") \
            from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and (v is None or isinstance(v, str))
                                             for k, v in data.items()):
        raise OfflineKDError(f"{where}.vocabulary_map {path}: must map teacher tokens to student tokens (or null)")
    return data


# ---------------------------------------------------------------------------------------------------- frames
class FrameAlignment:
    """Teacher frames at `teacher_shift` -> student frames at `student_shift` (any common unit)."""

    def __init__(self, teacher_shift: Fraction, student_shift: Fraction, hidden: str = "mean",
                 max_length_mismatch: int = 2, where: str = "teacher"):
        if hidden not in HIDDEN_POOLING:
            raise OfflineKDError(f"{where}.hidden_pooling must be one of {', '.join(HIDDEN_POOLING)}, got {hidden!r}")
        if not isinstance(max_length_mismatch, int) or max_length_mismatch < 0:
            raise OfflineKDError(f"{where}.max_length_mismatch must be an integer >= 0")
        ratio = Fraction(student_shift) / Fraction(teacher_shift)
        if ratio.numerator != 1 and ratio.denominator != 1:
            raise OfflineKDError(f"{where}: the student's frame shift is {float(ratio):g} times the teacher's; it must "
                                 f"be an integer multiple or an integer fraction (e.g. 2 or 1/2)")
        self.pool = int(ratio) if ratio.denominator == 1 else 1          # teacher frames per student frame
        self.repeat = ratio.denominator                                  # student frames per teacher frame
        self.hidden = hidden if self.pool > 1 else "mean"
        self.tolerance = max_length_mismatch
        self.teacher_shift, self.student_shift = Fraction(teacher_shift), Fraction(student_shift)

    @property
    def identity(self) -> bool:
        return self.pool == 1 and self.repeat == 1

    def width(self, dim: int) -> int:
        return dim * self.pool if self.hidden == "stack" else dim

    def record(self, unit: str) -> dict:
        return {"teacher_frame_shift": _num(self.teacher_shift), "student_frame_shift": _num(self.student_shift),
                "unit": unit, "pool": self.pool, "repeat": self.repeat,
                "posteriors": SPIKES if self.pool > 1 else "repeated" if self.repeat > 1 else "as is",
                "hidden": self.hidden if self.pool > 1 else "repeated" if self.repeat > 1 else "as is",
                "lengths": f"ceil(feature frames / student subsampling); extra frames dropped at the end, missing "
                           f"ones repeat the last, at most {self.tolerance}"}

    def lengths(self, teacher_lengths: torch.Tensor) -> torch.Tensor:
        """Teacher frame counts -> their counts at the student's rate, before the length rule."""
        return -(-teacher_lengths // self.pool) if self.pool > 1 else teacher_lengths * self.repeat

    def check(self, lengths: torch.Tensor, target: torch.Tensor) -> None:
        """`LengthMismatch` (naming the batch row) where the counts at the student's rate differ from `target` by
        more than the tolerance."""
        lengths = lengths.to(target.device)
        diff = (lengths - target).abs()
        empty = (lengths < 1) & (target >= 1)        # nothing to repeat: the teacher saw too few samples
        if bool((diff > self.tolerance).any() or empty.any()):
            b = int(torch.where(empty, diff.max() + 1, diff).argmax())
            raise LengthMismatch(b, int(lengths[b]), int(target[b]), self.tolerance)

    def apply(self, log_probs: torch.Tensor, lengths: torch.Tensor, hidden: dict, target: torch.Tensor,
              blank: int = 0):
        """(T, B, V) log-probs (`blank`: the teacher's blank class), (B,) teacher lengths, {L: (B, T, H)} -> the same
        on the student's frames, whose lengths are `target`."""
        lp = log_probs.transpose(0, 1)                        # (B, T, V)
        if self.pool > 1:
            src = _spike_sources(lp, lengths, self.pool, blank)
            lp = torch.gather(lp, 1, src.to(lp.device)[..., None].expand(-1, -1, lp.shape[-1]))
            hidden = {L: _pool_hidden(h, lengths, self.pool, self.hidden) for L, h in hidden.items()}
            lengths = -(-lengths // self.pool)
        elif self.repeat > 1:
            lp = lp.repeat_interleave(self.repeat, dim=1)
            hidden = {L: h.repeat_interleave(self.repeat, dim=1) for L, h in hidden.items()}
            lengths = lengths * self.repeat
        self.check(lengths, target)
        t_max = int(target.max()) if len(target) else 0
        if lp.shape[1] == t_max and torch.equal(lengths.to(target.device), target):     # nothing to reconcile
            return lp.transpose(0, 1), target, hidden
        index = torch.minimum(torch.arange(t_max, device=lp.device)[None, :],
                              (lengths.to(lp.device) - 1).clamp_min(0)[:, None])     # (B, T): the last frame repeats
        lp = torch.gather(lp, 1, index[..., None].expand(-1, -1, lp.shape[-1]))
        hidden = {L: torch.gather(h, 1, index[..., None].expand(-1, -1, h.shape[-1])) for L, h in hidden.items()}
        return lp.transpose(0, 1).contiguous(), target, hidden


class LengthMismatch(OfflineKDError):
    def __init__(self, b: int, got: int, want: int, tolerance: int):
        self.b = b
        why = f"more than max_length_mismatch {tolerance} apart" if got else "the utterance is too short for it"
        super().__init__(f"the teacher gives {got} frames (at the student's rate) where the student has {want}, "
                         f"{why}")


def _num(f: Fraction):
    return int(f) if f.denominator == 1 else float(f)


def _spike_sources(lp: torch.Tensor, lengths: torch.Tensor, k: int, blank: int) -> torch.Tensor:
    """(B, T, V) log-probs at the teacher's rate -> (B, ceil(T/k)): the teacher frame whose distribution each student
    frame takes. A CTC teacher's posteriors are spikes one frame wide between blanks: averaging k frames would halve
    every spike against the blank around it, and the pooled 1-best loses most tokens (on the demo, 63% dev WER from a
    teacher at 3.9%). Instead every emission of the teacher's greedy 1-best (a run of one non-blank class) keeps its
    own student frame and brings the distribution of its most confident frame: the frame of its group, or the next
    free one when an earlier emission took it, one further when the same class was emitted just before (CTC needs a
    blank between repeats); an emission with no frame left before the utterance's end is dropped. Every other
    student frame takes its group's most blank frame. Frames past an utterance's end take its last frame."""
    b, t, _ = lp.shape
    groups = -(-t // k)
    peak, best = lp.max(-1)
    peak, best = peak.float().cpu(), best.cpu()                             # (B, T)
    pos = torch.arange(groups * k)[None, :]
    lengths = lengths.cpu().clamp(0, t)
    blank_lp = torch.full((b, groups * k), -math.inf)
    blank_lp[:, :t] = lp[..., blank].float().cpu()
    blank_lp = blank_lp.masked_fill(pos >= lengths[:, None], -math.inf).view(b, groups, k)
    src = blank_lp.argmax(-1) + torch.arange(groups)[None, :] * k           # (B, G): the most blank frame
    last = (lengths - 1).clamp_min(0)
    src = torch.minimum(src, last[:, None])
    for i in range(b):
        n = int(lengths[i])
        for g, frame in _emission_slots(best[i, :n].tolist(), peak[i, :n].tolist(), k, blank, -(-n // k)):
            src[i, g] = frame
    return src


def _emission_slots(best: list, peak: list, k: int, blank: int, slots: int) -> list:
    """[(student frame, teacher frame)] of one utterance's greedy path (`_spike_sources`): each emission's, and
    between two emissions of the same class, the most blank teacher frame between them, counted from the last group
    the first one's run fills."""
    out, g_prev, c_prev, end_prev = [], -1, None, -1
    t = 0
    while t < len(best):
        c = best[t]
        if c == blank:
            t += 1
            continue
        end = t
        while end + 1 < len(best) and best[end + 1] == c:
            end += 1
        frame = max(range(t, end + 1), key=lambda f: peak[f])              # the run's most confident frame
        g = max(t // k, g_prev + 1)
        if c == c_prev and g == g_prev + 1:                                  # a repeat: a blank frame between
            if g + 1 >= slots:
                break
            # every frame between two emissions of one class is blank (another class would be an emission between)
            out.append((g, max(range(end_prev + 1, t), key=lambda f: peak[f])))
            g += 1
        if g >= slots:
            break
        out.append((g, frame))
        # a run over whole groups after its own shows its class there too (their most blank frame is still the run's)
        g_prev, c_prev, end_prev, t = max(g, (end + 1) // k - 1), c, end, end + 1
    return out


def _pool_hidden(h: torch.Tensor, lengths: torch.Tensor, k: int, how: str) -> torch.Tensor:
    """(B, T, H) -> (B, ceil(T/k), H) means over each group's valid frames, or (B, ceil(T/k), k*H) stacked (frames
    past the end repeat the utterance's last)."""
    b, t, d = h.shape
    groups = -(-t // k)
    pos = torch.arange(groups * k, device=h.device)[None, :]
    last = (lengths.to(h.device) - 1).clamp_min(0)[:, None]
    if how == "stack":
        idx = torch.minimum(pos, last).clamp_max(t - 1)
        return torch.gather(h, 1, idx[..., None].expand(-1, -1, d)).reshape(b, groups, k * d)
    valid = (pos < lengths.to(h.device)[:, None]).to(h.dtype)
    x = torch.zeros(b, groups * k, d, device=h.device, dtype=h.dtype)
    x[:, :t] = h
    x = (x * valid[..., None]).view(b, groups, k, d).sum(2)
    return x / valid.view(b, groups, k).sum(-1).clamp_min(1)[..., None]


# ---------------------------------------------------------------------------------------------------- the wrapper
class AlignedTeacher(nn.Module):
    """Any teacher (`inner`) seen as a `CTCModel` in the student's vocabulary, on the student's frames: class i is
    the student's token i, output frames are ceil(feature frames / `subsampling`).

    `inner` reads features (`input_kind` "features", frames at its `subsampling` of the features') or waveforms
    (`input_kind` "waveform", frames every `frame_shift_samples` samples). A waveform teacher is called with the
    samples and, as `num_frames`, the utterances' feature frame counts: its targets line up with the features."""

    model_type = "aligned"

    def __init__(self, inner: nn.Module, vmap: VocabularyMap, frames: FrameAlignment, subsampling: int,
                 record: dict, input_dim: int):
        super().__init__()
        self.inner, self.vmap, self.frames = inner, vmap, frames
        self._subsampling = int(subsampling)
        self.input_kind = getattr(inner, "input_kind", "features")
        self._record = record
        self._input_dim = int(input_dim)        # a waveform teacher's: the dimension of the features it lines up with
        self._measured: Optional[list] = None

    @property
    def input_dim(self) -> int:
        return self._input_dim

    @property
    def input_dim_key(self) -> str:
        return getattr(self.inner, "input_dim_key", "the teacher's input_dim")

    @property
    def num_classes(self) -> int:
        return len(self.vmap.student)

    @property
    def blank(self) -> int:
        return 0

    @property
    def subsampling(self) -> int:
        return self._subsampling

    @property
    def num_layers(self) -> int:
        return max(self.inner.layer_dims())

    def layer_dims(self) -> dict[int, int]:
        return {L: self.frames.width(d) for L, d in self.inner.layer_dims().items()}

    def describe(self) -> dict:
        return dict(self._record)

    def state_dict(self, *args, **kwargs):
        return self.inner.state_dict(*args, **kwargs)

    def forward_with_hidden_states(self, x: torch.Tensor, lengths: torch.Tensor, return_layer_indices=None,
                                   num_frames: Optional[torch.Tensor] = None):
        layers = sorted(set(return_layer_indices or []))
        lp, out_len, hidden = self.inner.forward_with_hidden_states(x, lengths, layers)
        frames = lengths if num_frames is None else num_frames
        target = -(-frames.to(out_len.device, torch.int64) // self._subsampling)
        lp, out_len, hidden = self.frames.apply(lp, out_len.to(torch.int64), hidden, target, self.vmap.teacher_blank)
        if self._measured is not None:              # (T', B): each utterance's valid frames
            mass = self.vmap.dropped_mass(lp)
            self._measured += [mass[: int(n), b].cpu() for b, n in enumerate(out_len.tolist())]
        return self.vmap.apply(lp), out_len, hidden

    @contextlib.contextmanager
    def measuring_dropped(self):
        """Within: every forward appends each utterance's per-frame dropped probability (VocabularyMap.dropped_mass)
        to the list yielded."""
        self._measured = []
        try:
            yield self._measured
        finally:
            self._measured = None

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, num_frames: Optional[torch.Tensor] = None):
        lp, out_len, _ = self.forward_with_hidden_states(x, lengths, None, num_frames=num_frames)
        return lp, out_len
