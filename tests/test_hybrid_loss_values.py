"""The hybrid loss against independent values: B > 1, unequal lengths, teacher tokens distinct from the labels and
every weight non-zero, so that a term on the wrong weight, the wrong targets or the wrong normaliser shows.

The expected values are computed here without `offline_kd.losses`: per-frame KL by explicit loops in float64 over
valid frames only, CTC from torch's per-utterance losses, MSE by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from offline_kd.losses.kd import soft_kd_loss
from offline_kd.losses.terms import hybrid_loss

ALPHA, BETA, GAMMA, SEQ, T = 0.7, 0.2, 0.1, 0.3, 2.5


def _kl_by_hand(s: np.ndarray, t: np.ndarray, lengths, temperature: float) -> float:
    """T^2 * mean over valid frames of KL(softmax(t/T) || softmax(s/T)); s, t (T, B, V) numpy float64."""
    total, frames = 0.0, 0
    for b, n in enumerate(lengths):
        for f in range(n):
            zt, zs = t[f, b] / temperature, s[f, b] / temperature
            pt = np.exp(zt - zt.max())
            pt /= pt.sum()
            ls = zs - zs.max() - math.log(np.exp(zs - zs.max()).sum())
            lt = np.log(pt)
            total += float((pt * (lt - ls)).sum())
            frames += 1
    return total / frames * temperature ** 2


def _ctc_by_hand(s: torch.Tensor, targets: list[list[int]], lengths) -> float:
    """Mean over utterances of (per-utterance CTC / its target length)."""
    vals = []
    for b, (tgt, n) in enumerate(zip(targets, lengths)):
        per = F.ctc_loss(s[:n, b:b + 1].double(), torch.tensor([tgt]), torch.tensor([n]), torch.tensor([len(tgt)]),
                         blank=0, reduction="sum", zero_infinity=True)
        vals.append(per.item() / len(tgt))
    return float(np.mean(vals))


def _mse_by_hand(pred: np.ndarray, target: np.ndarray, lengths) -> float:
    num, den = 0.0, 0
    for b, n in enumerate(lengths):
        num += float(((pred[b, :n] - target[b, :n]) ** 2).sum())
        den += n * pred.shape[-1]
    return num / den


@pytest.fixture()
def batch():
    g = torch.Generator().manual_seed(7)
    t_max, B, V, H = 9, 3, 6, 4
    lengths = [9, 5, 2]           # frame-mean != batch-mean of per-utterance means != per-batch-element sums
    s = torch.randn(t_max, B, V, generator=g).mul(2).log_softmax(-1)
    t = torch.randn(t_max, B, V, generator=g).mul(3).log_softmax(-1)
    labels = [[1, 2, 3], [4, 5], [2]]
    teacher = [[3, 1], [5, 5, 4], [1]]       # distinct from the labels, different lengths
    student_h = {2: torch.randn(B, t_max, H, generator=g), 3: torch.randn(B, t_max, H, generator=g)}
    teacher_h = {2: torch.randn(B, t_max, H, generator=g), 4: torch.randn(B, t_max, H, generator=g)}
    for d in (student_h, teacher_h):         # padding values that would dominate any unmasked term
        for v in d.values():
            for b, n in enumerate(lengths):
                v[b, n:] = 50.0
    return dict(s=s, t=t, lengths=lengths, labels=labels, teacher=teacher, student_h=student_h, teacher_h=teacher_h)


def _flat(seqs):
    return torch.tensor([x for q in seqs for x in q]), torch.tensor([len(q) for q in seqs])


def test_every_term_against_independent_values(batch):
    b = batch
    lengths = torch.tensor(b["lengths"])
    labels, label_lengths = _flat(b["labels"])
    tokens, token_lengths = _flat(b["teacher"])
    mapping = {2: 2, 3: 4}
    total, terms = hybrid_loss(b["s"], lengths, labels, label_lengths, b["t"], T, ALPHA, BETA, GAMMA,
                               b["student_h"], b["teacher_h"], mapping, seq_weight=SEQ, teacher_tokens=tokens,
                               teacher_token_lengths=token_lengths)
    soft = _kl_by_hand(b["s"].double().numpy(), b["t"].double().numpy(), b["lengths"], T)
    ctc = _ctc_by_hand(b["s"], b["labels"], b["lengths"])
    seq = _ctc_by_hand(b["s"], b["teacher"], b["lengths"])
    feature = np.mean([_mse_by_hand(b["student_h"][s].numpy(), b["teacher_h"][t].numpy(), b["lengths"])
                       for s, t in mapping.items()])
    assert terms["soft"].item() == pytest.approx(soft, rel=1e-5)
    assert terms["ctc"].item() == pytest.approx(ctc, rel=1e-5)
    assert terms["seq"].item() == pytest.approx(seq, rel=1e-5)
    assert terms["feature"].item() == pytest.approx(feature, rel=1e-5)
    # the sequence-level term is not the reference-label CTC (the test data make them differ)
    assert abs(seq - ctc) > 0.1
    expected = ALPHA * soft + BETA * ctc + GAMMA * feature + SEQ * seq
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert terms["total"].item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("weight", ["alpha", "beta", "gamma", "seq_weight"])
def test_each_weight_scales_its_own_term_only(batch, weight):
    """Doubling one weight adds exactly that term once more to the total."""
    b = batch
    lengths = torch.tensor(b["lengths"])
    labels, label_lengths = _flat(b["labels"])
    tokens, token_lengths = _flat(b["teacher"])
    w = {"alpha": ALPHA, "beta": BETA, "gamma": GAMMA, "seq_weight": SEQ}
    term = {"alpha": "soft", "beta": "ctc", "gamma": "feature", "seq_weight": "seq"}[weight]

    def run(ws):
        return hybrid_loss(b["s"], lengths, labels, label_lengths, b["t"], T, ws["alpha"], ws["beta"], ws["gamma"],
                           b["student_h"], b["teacher_h"], {2: 2, 3: 4}, seq_weight=ws["seq_weight"],
                           teacher_tokens=tokens, teacher_token_lengths=token_lengths)
    base, terms = run(w)
    doubled, _ = run({**w, weight: 2 * w[weight]})
    assert doubled.item() - base.item() == pytest.approx(w[weight] * terms[term].item(), rel=1e-4)


def test_soft_kl_is_a_mean_over_valid_frames_not_over_utterances(batch):
    b = batch
    got = soft_kd_loss(b["s"], b["t"], torch.tensor(b["lengths"]), 1.0).item()
    per_frame = _kl_by_hand(b["s"].double().numpy(), b["t"].double().numpy(), b["lengths"], 1.0)
    per_utt = np.mean([_kl_by_hand(b["s"][:, i:i + 1].double().numpy(), b["t"][:, i:i + 1].double().numpy(),
                                   [n], 1.0) for i, n in enumerate(b["lengths"])])
    assert got == pytest.approx(per_frame, rel=1e-5)
    assert abs(per_frame - per_utt) > 1e-3 * per_frame       # the data distinguish the two normalisers
    # a batch-size normaliser would be sum / B
    assert abs(got - per_frame * sum(b["lengths"]) / len(b["lengths"])) > 0.1


def test_teacher_zeros_give_a_finite_kl():
    """Sparse codecs (sampled, top-k) decode to -inf log-probs: 0 * log 0 counts as 0, never NaN."""
    t = torch.log(torch.tensor([[[0.5, 0.5, 0.0]], [[1.0, 0.0, 0.0]]]))
    s = torch.log(torch.tensor([[[0.4, 0.4, 0.2]], [[0.6, 0.2, 0.2]]]))
    got = soft_kd_loss(s, t, torch.tensor([2]), 1.0).item()
    expected = (0.5 * math.log(0.5 / 0.4) * 2 + math.log(1 / 0.6)) / 2
    assert got == pytest.approx(expected, rel=1e-6)


def test_all_masked_and_half_precision_inputs_give_float32_terms():
    from offline_kd.losses.kd import masked_mse
    h = torch.randn(2, 3, 4, dtype=torch.float16)
    empty = masked_mse(h, h + 1, torch.tensor([0, 0]))
    assert empty.item() == 0.0 and empty.dtype == torch.float32
    s = torch.randn(3, 2, 5).log_softmax(-1).half()
    assert soft_kd_loss(s, s, torch.tensor([0, 0]), 2.0).dtype == torch.float32
    total, terms = hybrid_loss(s, torch.tensor([3, 2]), torch.tensor([1, 2]), torch.tensor([1, 1]), s, 1.0, 0.5, 0.5,
                               0.0, layer_mapping={1: 1})
    assert total.dtype == torch.float32
    assert "feature" not in terms           # gamma = 0: the term is not computed, whatever the mapping


def test_temperature_schedule_before_its_first_entry_and_unsorted():
    from offline_kd.losses.kd import temperature_at
    assert temperature_at(1, [[5, 2.0]]) == 2.0            # the first entry's T also applies before it
    assert temperature_at(3, [[5, 2.0], [2, 3.0]]) == 3.0   # entries in any order
    assert temperature_at(6, [[5, 2.0], [2, 3.0]]) == 2.0
