"""KL targets that agree with the CTC label (`distill.kl_label_mix`).

A noisy teacher's posteriors follow its own greedy path; where the CTC target of the same utterance says otherwise
(the transcript, or the LM's pseudo-label that corrected the teacher), the KL term and the CTC term pull the student
towards two different transcriptions. `label_aligned_targets` mixes into the teacher's posteriors the label's CTC
forced alignment over those same posteriors (the teacher's most likely frame-by-frame path that spells the label):

    p'(t) = (1 - mix) * p_teacher(t) + mix * onehot(path(t))

With mix > 0.5 every frame's argmax follows the label's path, so the KL teaches the label, at the timing the
teacher itself would give it, and keeps the rest of the teacher's distribution as its dark knowledge. An utterance
whose label cannot be aligned in its frames (too many tokens and repeats) keeps the teacher's posteriors.

Shapes as in losses/kd.py: log-probs time-major (T, B, V); labels concatenated with their lengths (B,).
"""

from __future__ import annotations

import math

import torch


def _extended(labels: torch.Tensor, label_lengths: torch.Tensor, blank: int) -> torch.Tensor:
    """Concatenated labels -> (B, 2 L_max + 1) CTC states: blank, l1, blank, l2, ..., blank (padded with blanks)."""
    b = len(label_lengths)
    l_max = max(label_lengths.tolist(), default=0)
    ext = torch.full((b, 2 * l_max + 1), blank, device=labels.device)
    mask = torch.arange(l_max, device=labels.device)[None, :] < label_lengths[:, None]
    padded = torch.full((b, l_max), blank, device=labels.device)
    padded[mask] = labels.long()
    ext[:, 1::2] = padded
    return ext


def ctc_forced_path(log_probs: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor,
                    label_lengths: torch.Tensor, blank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The Viterbi CTC alignment of each utterance's label over its log-probs: ((B, T) class per frame, padding
    frames blank; (B,) bool, False where the label does not fit in the utterance's frames)."""
    t_max, b, _ = log_probs.shape
    dev = log_probs.device
    ext = _extended(labels.to(dev), label_lengths.to(dev), blank)                # (B, S)
    s_max = ext.shape[1]
    emit = log_probs.float().gather(2, ext[None].expand(t_max, -1, -1))        # (T, B, S)
    skip = torch.zeros(b, s_max, dtype=torch.bool, device=dev)               # l'[s] may follow l'[s - 2]
    skip[:, 2:] = (ext[:, 2:] != blank) & (ext[:, 2:] != ext[:, :-2])
    lengths = lengths.to(dev)
    alpha = torch.full((b, s_max), -math.inf, device=dev)
    alpha[:, 0] = emit[0, :, 0]
    alpha[:, 1:2] = emit[0, :, 1:2]
    back = torch.zeros(t_max, b, s_max, dtype=torch.long, device=dev)
    inf = torch.full((b, 1), -math.inf, device=dev)
    for t in range(1, t_max):
        one = torch.cat([inf, alpha], 1)[:, :s_max]                             # from state s - 1
        two = torch.cat([inf, inf, alpha], 1)[:, :s_max].masked_fill(~skip, -math.inf)
        best, step = torch.stack([alpha, one, two]).max(0)
        live = (t < lengths)[:, None]
        alpha = torch.where(live, best + emit[t], alpha)
        back[t] = torch.where(live, step, torch.zeros_like(step))
    last = 2 * label_lengths.to(dev)                                          # the final blank state
    ends = torch.stack([alpha.gather(1, last[:, None])[:, 0],
                        alpha.gather(1, (last - 1).clamp_min(0)[:, None])[:, 0].masked_fill(last == 0, -math.inf)])
    score, which = ends.max(0)
    state = last - which
    path = torch.full((b, t_max), blank, device=dev)
    for t in range(t_max - 1, -1, -1):
        live = t < lengths
        path[:, t] = torch.where(live, ext.gather(1, state[:, None])[:, 0], path[:, t])
        state = torch.where(live, state - back[t].gather(1, state[:, None])[:, 0], state)
    return path, torch.isfinite(score)


def label_aligned_targets(teacher_log_probs: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor,
                          label_lengths: torch.Tensor, mix: float) -> torch.Tensor:
    """(T, B, V) teacher log-probs (blank: class 0, as every model's) -> log((1 - mix) p + mix onehot(path)), `path`
    the CTC forced alignment of each utterance's label (`ctc_forced_path`); utterances whose label does not fit keep
    the teacher's log-probs."""
    if mix <= 0:
        return teacher_log_probs
    path, ok = ctc_forced_path(teacher_log_probs, lengths, labels, label_lengths)
    index = path.transpose(0, 1)[..., None]                                   # (T, B, 1)
    p = teacher_log_probs.float().exp() * (1 - mix)
    p.scatter_add_(2, index, torch.full(index.shape, mix, device=p.device))
    mixed = p.clamp_min(torch.finfo(torch.float32).tiny).log()
    return torch.where(ok[None, :, None], mixed, teacher_log_probs.float())
