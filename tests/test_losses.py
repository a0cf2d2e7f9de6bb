import math

import pytest
import torch

from offline_kd.losses.kd import ctc_loss, feature_matching_loss, masked_mse, soft_kd_loss, temperature_at
from offline_kd.losses.terms import hybrid_loss


def _lp(probs):
    return torch.log(torch.tensor(probs, dtype=torch.float32))


def test_soft_kd_hand_computed_value():
    # one frame, one utterance: teacher p = (0.5, 0.5), student q = (0.9, 0.1), T = 1
    t = _lp([[[0.5, 0.5]]])
    s = _lp([[[0.9, 0.1]]])
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    got = soft_kd_loss(s, t, torch.tensor([1]), temperature=1.0)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_soft_kd_temperature_is_applied_and_scaled_by_t_squared():
    t = _lp([[[0.7, 0.2, 0.1]]])
    s = _lp([[[0.2, 0.5, 0.3]]])
    T = 3.0
    pt = torch.softmax(t / T, -1)
    qs = torch.log_softmax(s / T, -1)
    expected = (pt * (pt.log() - qs)).sum().item() * T * T
    assert soft_kd_loss(s, t, torch.tensor([1]), T).item() == pytest.approx(expected, rel=1e-5)


def test_padding_does_not_change_any_term():
    torch.manual_seed(0)
    T, V, H = 5, 4, 3
    s = torch.randn(T, 1, V).log_softmax(-1)
    t = torch.randn(T, 1, V).log_softmax(-1)
    sh, th = torch.randn(1, T, H), torch.randn(1, T, H)
    lens = torch.tensor([T])
    labels, ll = torch.tensor([1, 2]), torch.tensor([2])
    pad = lambda x, dim: torch.cat([x, 100 * torch.randn_like(x).narrow(dim, 0, 3)], dim)  # noqa: E731
    a, ta = hybrid_loss(s, lens, labels, ll, t, 2.0, 0.7, 0.2, 0.1, {1: sh}, {1: th}, {1: 1},
                        seq_weight=0.5, teacher_tokens=labels, teacher_token_lengths=ll)
    s_p, t_p = pad(s, 0).log_softmax(-1), pad(t, 0).log_softmax(-1)
    b, tb = hybrid_loss(s_p, lens, labels, ll, t_p, 2.0, 0.7, 0.2, 0.1, {1: pad(sh, 1)}, {1: pad(th, 1)}, {1: 1},
                        seq_weight=0.5, teacher_tokens=labels, teacher_token_lengths=ll)
    for k in ("soft", "ctc", "feature", "seq", "total"):
        assert ta[k].item() == pytest.approx(tb[k].item(), rel=1e-5), k


def test_masked_mse_and_feature_matching_hand_computed():
    pred = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]])
    target = torch.tensor([[[0.0, 2.0], [3.0, 2.0], [0.0, 0.0]]])
    # valid frames 0..1: squared errors 1, 0, 0, 4 -> mean 1.25
    assert masked_mse(pred, target, torch.tensor([2])).item() == pytest.approx(1.25)
    fm = feature_matching_loss({2: pred, 3: target}, {2: target, 4: target}, {2: 2, 3: 4}, torch.tensor([2]))
    assert fm.item() == pytest.approx((1.25 + 0.0) / 2)


def test_hybrid_weights_and_ctc_term():
    torch.manual_seed(1)
    s = torch.randn(6, 2, 5).log_softmax(-1)
    t = torch.randn(6, 2, 5).log_softmax(-1)
    lens = torch.tensor([6, 4])
    labels, ll = torch.tensor([1, 2, 3, 4]), torch.tensor([2, 2])
    total, terms = hybrid_loss(s, lens, labels, ll, t, 4.0, 0.7, 0.2, 0.0)
    expected_ctc = torch.nn.functional.ctc_loss(s, labels, lens, ll, zero_infinity=True).item()
    assert terms["ctc"].item() == pytest.approx(expected_ctc, rel=1e-6)
    assert total.item() == pytest.approx(0.7 * terms["soft"].item() + 0.2 * expected_ctc, rel=1e-6)
    assert "feature" not in terms and "seq" not in terms


def test_ctc_zero_infinity_on_impossible_alignment():
    s = torch.randn(2, 1, 4).log_softmax(-1)
    loss = ctc_loss(s, torch.tensor([1, 1, 1]), torch.tensor([2]), torch.tensor([3]))
    assert loss.item() == 0.0


def test_all_masked_gives_zero():
    s = torch.randn(3, 1, 4).log_softmax(-1)
    assert soft_kd_loss(s, s, torch.tensor([0]), 2.0).item() == 0.0


def test_temperature_schedule_default():
    sched = [[1, 4.0], [31, 3.5], [71, 3.0]]
    assert temperature_at(1, sched) == 4.0
    assert temperature_at(30, sched) == 4.0
    assert temperature_at(31, sched) == 3.5
    assert temperature_at(70, sched) == 3.5
    assert temperature_at(71, sched) == 3.0
    assert temperature_at(100, sched) == 3.0
