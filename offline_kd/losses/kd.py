"""The hybrid distillation loss's terms, as small pure functions (tensors in, tensors out, no I/O); their weighted
sum is `losses/terms.py`.

Shapes: log-probs are time-major `(T, B, V)` as the model returns them; hidden states are `(B, T, H)`;
`lengths (B,)` count valid frames. Every term is computed in float32, masks padding and averages over valid
frames, so padding never changes a value.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def frame_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B, T) bool, True on valid frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def _kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last axis from log-probabilities, 0 * log 0 counted as 0 (sparse targets give -inf)."""
    p = p_log.exp()
    return torch.where(p > 0, p * (p_log - q_log), torch.zeros_like(p)).sum(-1)


def _tempered(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, temperature: float):
    """(student, teacher) log_softmax(x / T) in float32, the teacher cut to the student's frames."""
    t_max = student_log_probs.shape[0]
    return (F.log_softmax(student_log_probs.float() / temperature, dim=-1),
            F.log_softmax(teacher_log_probs[:t_max].float() / temperature, dim=-1))


def _frame_mean(values: torch.Tensor, mask: torch.Tensor, temperature: float,
                weights: torch.Tensor | None = None) -> torch.Tensor:
    """T^2 * the mean of per-frame `values` (T, B) over the frames in `mask` (T, B), which must not be empty (the
    callers return 0 before computing anything); with `weights` (B,) each utterance's frames count times its
    weight in the sum (the denominator stays the frame count)."""
    if weights is not None:
        values = values * weights[None, :]
    return (values * mask).sum() / mask.sum() * temperature ** 2


def soft_kd_loss(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, lengths: torch.Tensor,
                 temperature: float, weights: torch.Tensor | None = None) -> torch.Tensor:
    """T^2 * mean over valid frames of KL(softmax(teacher/T) || softmax(student/T)).

    Both inputs are log-probabilities at temperature 1, `(T, B, V)`. Because log_softmax(log_softmax(z)/T) ==
    log_softmax(z/T), re-tempering cached temperature-1 log-probs is exact.
    """
    mask = frame_mask(lengths, student_log_probs.shape[0]).transpose(0, 1)          # (T, B)
    if not mask.any():
        return student_log_probs.new_zeros((), dtype=torch.float32)
    s, t = _tempered(student_log_probs, teacher_log_probs, temperature)
    return _frame_mean(_kl(t, s), mask, temperature, weights)


def spike_frames(teacher_log_probs: torch.Tensor, lengths: torch.Tensor, context: int) -> torch.Tensor:
    """(T, B) bool: valid frames within `context` frames of a teacher spike (a frame whose argmax is not blank 0).
    Symmetric selection (Hilmes et al. 2025): the KL is taken on the spikes and `context` blank frames each side."""
    t_max = teacher_log_probs.shape[0]
    spikes = (teacher_log_probs.argmax(-1) != 0).float()                          # (T, B)
    if context > 0:
        kernel = torch.ones(1, 1, 2 * context + 1, device=spikes.device)
        near = F.conv1d(spikes.transpose(0, 1)[:, None], kernel, padding=context)[:, 0].transpose(0, 1) > 0
    else:
        near = spikes > 0
    return near & frame_mask(lengths, t_max).transpose(0, 1)


def selected_kd_loss(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, lengths: torch.Tensor,
                     temperature: float, context: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """T^2 * mean over the frames selected by `spike_frames` of KL(teacher/T || student/T); 0 with no spike."""
    sel = spike_frames(teacher_log_probs[:student_log_probs.shape[0]], lengths, context)
    if not sel.any():
        return student_log_probs.new_zeros((), dtype=torch.float32)
    s, t = _tempered(student_log_probs, teacher_log_probs, temperature)
    return _frame_mean(_kl(t, s), sel, temperature, weights)


def collapsed_kd_loss(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, lengths: torch.Tensor,
                      temperature: float, weights: torch.Tensor | None = None) -> torch.Tensor:
    """T^2 * mean over valid frames of KL between the (blank, token, rest) collapses of the tempered teacher and
    student distributions, `token` being the teacher's most likely non-blank token at that frame (Panchapagesan et
    al. 2021: the teacher's ranking of the tail is not imitated, only how sure it is of blank and of its token)."""
    mask = frame_mask(lengths, student_log_probs.shape[0]).transpose(0, 1)
    if not mask.any():
        return student_log_probs.new_zeros((), dtype=torch.float32)
    s, t = _tempered(student_log_probs, teacher_log_probs, temperature)
    token = t[..., 1:].argmax(-1, keepdim=True) + 1                              # (T, B, 1)

    def collapse(lp):
        other = lp.scatter(-1, token, float("-inf"))
        other = torch.cat([torch.full_like(other[..., :1], float("-inf")), other[..., 1:]], -1)
        return torch.stack([lp[..., 0], lp.gather(-1, token)[..., 0], torch.logsumexp(other, -1)], -1)
    return _frame_mean(_kl(collapse(t), collapse(s)), mask, temperature, weights)


def ctc_loss(log_probs: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor,
             label_lengths: torch.Tensor) -> torch.Tensor:
    """CTC (blank 0, zero_infinity), mean over the batch of per-utterance loss / label length."""
    return F.ctc_loss(log_probs.float(), labels, lengths, label_lengths, blank=0, reduction="mean",
                      zero_infinity=True)


def weighted_ctc_loss(log_probs: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor,
                      label_lengths: torch.Tensor, owner: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """CTC over weighted target sequences, several per utterance (an N-best): entry e is a target of utterance
    owner[e] with weight weights[e]; sum_e w_e * loss_e / |y_e| over the number of utterances. With one entry of
    weight 1 per utterance it equals `ctc_loss`."""
    per = F.ctc_loss(log_probs.float().index_select(1, owner), labels, lengths.index_select(0, owner), label_lengths,
                     blank=0, reduction="none", zero_infinity=True)
    return (weights * per / label_lengths.clamp(min=1)).sum() / log_probs.shape[1]


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean squared error over valid frames and all dims; prediction/target (B, T, H)."""
    t_max = prediction.shape[1]
    mask = frame_mask(lengths, t_max)[..., None].float()
    denom = mask.sum() * prediction.shape[-1]
    if denom == 0:
        return prediction.new_zeros((), dtype=torch.float32)
    diff = (prediction.float() - target[:, :t_max].float()) ** 2
    return (diff * mask).sum() / denom


def feature_matching_loss(projected_student: dict[int, torch.Tensor], teacher_hidden: dict[int, torch.Tensor],
                          layer_mapping: dict[int, int], lengths: torch.Tensor) -> torch.Tensor:
    """Mean over mapped layer pairs of masked MSE(projected student layer s, teacher layer layer_mapping[s])."""
    terms = [masked_mse(projected_student[s], teacher_hidden[t], lengths) for s, t in layer_mapping.items()]
    return torch.stack(terms).mean()


def codebook_loss(logits: dict[int, torch.Tensor], teacher_codes: dict[int, torch.Tensor],
                  layer_mapping: dict[int, int], lengths: torch.Tensor) -> torch.Tensor:
    """MVQ-KD's codebook loss (icefall's JointCodebookLoss): for each mapped pair, the student head's logits
    (B, T, N * K) against the teacher layer's codebook indexes (B, T, N), cross-entropy summed over the N codebooks
    and averaged over valid frames; the mean over the mapped pairs."""
    terms = []
    for s, t in layer_mapping.items():
        codes = teacher_codes[t]
        b, t_max, n = logits[s].shape[0], logits[s].shape[1], codes.shape[-1]
        lg = logits[s].float().reshape(b, t_max, n, -1)
        ce = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), codes[:, :t_max].reshape(-1).long(),
                             reduction="none").view(b, t_max, n).sum(-1)
        mask = frame_mask(lengths, t_max).float()
        terms.append((ce * mask).sum() / mask.sum().clamp_min(1.0))
    return torch.stack(terms).mean()


def utterance_confidence(teacher_log_probs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(T, B, V) teacher log-probs -> (B,) the mean posterior of the greedy token over each utterance's non-blank
    frames (all its frames when every one is blank): the confidence the dump stores (cache/confidence.py)."""
    top, best = teacher_log_probs.float().max(-1)                                  # (T, B)
    valid = frame_mask(lengths.to(top.device), top.shape[0]).transpose(0, 1)
    spoken = valid & (best != 0)
    use = torch.where(spoken.any(0, keepdim=True), spoken, valid).float()
    return (top.exp() * use).sum(0) / use.sum(0).clamp_min(1)


def temperature_at(epoch: int, schedule: list) -> float:
    """schedule [[first_epoch, T], ...] (1-based epochs): the T of the last entry whose first_epoch <= epoch."""
    temp = float(schedule[0][1])
    for first, value in sorted(schedule, key=lambda e: e[0]):
        if epoch >= first:
            temp = float(value)
    return temp
