"""The distillation loss as a sum of small terms, each an `nn.Module` with a weight.

    loss_fn = DistillationLoss([SpikeKL(weight=0.3), CTCTerm(weight=1.0)])
    total, terms = loss_fn(student_log_probs, lengths, teacher, labels, label_lengths, temperature=1.0)

`student_log_probs` is time-major `(T, B, V)` (log-softmax over V, blank 0), `lengths (B,)` its valid frames, and
`teacher` a `TeacherTargets` (`collate_frames` of `TeacherFrames` read by utterance id, or a batch of the
trainer's). Each term's `forward(inputs: LossInputs)` returns one float32 scalar averaged over valid frames (or
utterances); `DistillationLoss` returns `weight * value` summed in list order and `{term name: detached value,
"total": ...}`. A term of weight 0 is not computed. The math is in `losses/kd.py`; nothing here needs a config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from offline_kd.data.targets import TeacherTargets
from offline_kd.losses.kd import (codebook_loss, collapsed_kd_loss, ctc_loss, feature_matching_loss,
                                  selected_kd_loss, soft_kd_loss, weighted_ctc_loss)


@dataclass
class LossInputs:
    """What the terms read. Log-probs are `(T, B, V)`, hidden states `(B, T, H)`."""
    log_probs: torch.Tensor                              # the student's
    lengths: torch.Tensor                                # (B,) the student's valid frames
    teacher_log_probs: torch.Tensor                      # (T', B, V) at temperature 1
    temperature: float = 1.0
    labels: Optional[torch.Tensor] = None                # CTC targets, concatenated, with their lengths (B,)
    label_lengths: Optional[torch.Tensor] = None
    teacher_hidden: Optional[dict] = None                # {teacher layer: (B, T', H)}
    projected: Optional[dict] = None                     # {student layer: (B, T, H') its projection (or logits)}
    teacher_codes: Optional[dict] = None                 # {teacher layer: (B, T', N) codebook indexes}
    teacher_tokens: Optional[torch.Tensor] = None        # the teacher's 1-best, concatenated, and lengths (B,)
    teacher_token_lengths: Optional[torch.Tensor] = None
    ctc_owner: Optional[torch.Tensor] = None             # (E,) weighted CTC targets: entry e belongs to owner[e]
    ctc_weights: Optional[torch.Tensor] = None           # (E,) ... with weight ctc_weights[e]
    kl_utterance_weights: Optional[torch.Tensor] = None  # (B,) per-utterance weights of the KL term
    ctc_utterance_weights: Optional[torch.Tensor] = None  # (B,) per-utterance weights of the CTC term
    teacher_fields: Optional[dict] = None                # the cache's further per-frame fields {name: (B, T', ...)}


class LossTerm(nn.Module):
    """One weighted term. Subclasses set `name` and implement `forward(inputs) -> scalar`."""

    name = "term"

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = float(weight)

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}"


class SoftKL(LossTerm):
    """T^2 * KL(teacher/T || student/T), the mean over every valid frame (Hinton et al.)."""
    name = "soft"

    def forward(self, i: LossInputs) -> torch.Tensor:
        return soft_kd_loss(i.log_probs, i.teacher_log_probs, i.lengths, i.temperature, i.kl_utterance_weights)


class SpikeKL(LossTerm):
    """The KL on the frames within `context` frames of a teacher spike (a non-blank argmax) only."""
    name = "soft"

    def __init__(self, weight: float = 1.0, context: int = 2):
        super().__init__(weight)
        self.context = int(context)

    def forward(self, i: LossInputs) -> torch.Tensor:
        return selected_kd_loss(i.log_probs, i.teacher_log_probs, i.lengths, i.temperature, self.context,
                                i.kl_utterance_weights)


class CollapsedKL(LossTerm):
    """The KL between (blank, the teacher's token, the rest) collapses of both distributions, every frame."""
    name = "soft"

    def forward(self, i: LossInputs) -> torch.Tensor:
        return collapsed_kd_loss(i.log_probs, i.teacher_log_probs, i.lengths, i.temperature, i.kl_utterance_weights)


class CTCTerm(LossTerm):
    """CTC on `labels` (mean over utterances of loss / label length). With `ctc_owner`/`ctc_weights` (several
    weighted targets per utterance: an LM N-best as pseudo-labels) or `ctc_utterance_weights` (B,), the weighted
    CTC: sum_e w_e * loss_e / |y_e| over the number of utterances."""
    name = "ctc"

    def forward(self, i: LossInputs) -> torch.Tensor:
        owner, weights = i.ctc_owner, i.ctc_weights
        if i.ctc_utterance_weights is not None:
            if owner is None:
                owner = torch.arange(len(i.lengths), device=i.lengths.device)
                weights = i.ctc_utterance_weights
            else:
                weights = weights * i.ctc_utterance_weights[owner]
        if owner is None:
            return ctc_loss(i.log_probs, i.labels, i.lengths, i.label_lengths)
        return weighted_ctc_loss(i.log_probs, i.labels, i.lengths, i.label_lengths, owner, weights)


class SequenceCTC(LossTerm):
    """CTC on the teacher's greedy 1-best (`teacher_tokens`), whatever the labels."""
    name = "seq"

    def forward(self, i: LossInputs) -> torch.Tensor:
        return ctc_loss(i.log_probs, i.teacher_tokens, i.lengths, i.teacher_token_lengths)


class FeatureMSE(LossTerm):
    """The mean over `layer_mapping` {student layer: teacher layer} of the masked MSE between the projected student
    layer (`projected`) and the teacher layer (`teacher_hidden`)."""
    name = "feature"

    def __init__(self, weight: float, layer_mapping: dict):
        super().__init__(weight)
        self.layer_mapping = {int(s): int(t) for s, t in layer_mapping.items()}

    def forward(self, i: LossInputs) -> torch.Tensor:
        return feature_matching_loss(i.projected, i.teacher_hidden, self.layer_mapping, i.lengths)


class CodebookCE(FeatureMSE):
    """The codebook cross-entropy (MVQ-KD): each head's logits (`projected`) against the teacher layer's codebook
    indexes (`teacher_codes`), summed over codebooks, the mean over frames and mapped pairs."""

    def forward(self, i: LossInputs) -> torch.Tensor:
        return codebook_loss(i.projected, i.teacher_codes, self.layer_mapping, i.lengths)


class DistillationLoss(nn.Module):
    """The sum of `terms` (each `weight * value`, in list order). Returns (total, {name: detached value, "total"})."""

    def __init__(self, terms):
        super().__init__()
        self.terms = nn.ModuleList(terms)

    def compute(self, inputs: LossInputs):
        values: dict[str, torch.Tensor] = {}
        total = inputs.log_probs.new_zeros((), dtype=torch.float32)
        for term in self.terms:
            if term.weight:
                values[term.name] = term(inputs)
                total = total + term.weight * values[term.name]
        values["total"] = total
        return total, {k: v.detach() for k, v in values.items()}

    def forward(self, log_probs: torch.Tensor, lengths: torch.Tensor, teacher: TeacherTargets,
                labels: Optional[torch.Tensor] = None, label_lengths: Optional[torch.Tensor] = None, *,
                temperature: float = 1.0, **extra):
        """The student's `(T, B, V)` log-probs and `(B,)` lengths against `teacher` (a `TeacherTargets`);
        `extra` sets the other `LossInputs` fields (projected, teacher_codes, weights)."""
        return self.compute(LossInputs(log_probs, lengths, teacher.log_probs, temperature, labels, label_lengths,
                                       teacher_hidden=teacher.hidden, teacher_tokens=teacher.tokens,
                                       teacher_token_lengths=teacher.token_lengths,
                                       teacher_fields=teacher.fields, **extra))


def kl_term(weight: float, frames: str = "all", target: str = "full", spike_context: int = 2) -> LossTerm:
    """The KL term of a recipe: `target` collapsed, else `frames` spikes (around the teacher's spikes) or all."""
    if target == "collapsed":
        return CollapsedKL(weight)
    if frames == "spikes":
        return SpikeKL(weight, spike_context)
    return SoftKL(weight)


def hybrid_terms(alpha: float, beta: float, gamma: float, layer_mapping: Optional[dict] = None,
                 seq_weight: float = 0.0, kl_frames: str = "all", spike_context: int = 2, kl_target: str = "full",
                 codebook: bool = False) -> list[LossTerm]:
    """alpha * KL + beta * CTC + gamma * feature (MSE, or the codebook CE) + seq_weight * CTC on the 1-best."""
    terms = [kl_term(alpha, kl_frames, kl_target, spike_context), CTCTerm(beta)]
    if layer_mapping:
        terms.append((CodebookCE if codebook else FeatureMSE)(gamma, layer_mapping))
    terms.append(SequenceCTC(seq_weight))
    return terms


def hybrid_loss(student_log_probs: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor,
                label_lengths: torch.Tensor, teacher_log_probs: torch.Tensor, temperature: float,
                alpha: float, beta: float, gamma: float, projected_student: Optional[dict] = None,
                teacher_hidden: Optional[dict] = None, layer_mapping: Optional[dict] = None,
                seq_weight: float = 0.0, teacher_tokens: Optional[torch.Tensor] = None,
                teacher_token_lengths: Optional[torch.Tensor] = None, kl_frames: str = "all", spike_context: int = 2,
                kl_target: str = "full", ctc_owner: Optional[torch.Tensor] = None,
                ctc_weights: Optional[torch.Tensor] = None, kl_utterance_weights: Optional[torch.Tensor] = None,
                ctc_utterance_weights: Optional[torch.Tensor] = None, teacher_codes: Optional[dict] = None):
    """alpha * soft KD + beta * CTC + gamma * feature MSE (+ seq_weight * CTC on the teacher's 1-best), in one call:
    `DistillationLoss(hybrid_terms(...))` on these inputs. `kl_frames="spikes"` / `kl_target="collapsed"` pick the
    KL term; with `teacher_codes` the feature term is the codebook CE of the heads' logits (`projected_student`).
    Returns (total, {"soft", "ctc", "feature", "seq", "total"}) with detached terms; a term of weight 0 is absent."""
    terms = hybrid_terms(alpha, beta, gamma, layer_mapping, seq_weight, kl_frames, spike_context, kl_target,
                         codebook=teacher_codes is not None)
    inputs = LossInputs(student_log_probs, lengths, teacher_log_probs, temperature, labels, label_lengths,
                        teacher_hidden, projected_student, teacher_codes, teacher_tokens, teacher_token_lengths,
                        ctc_owner, ctc_weights, kl_utterance_weights, ctc_utterance_weights)
    return DistillationLoss(terms).compute(inputs)
