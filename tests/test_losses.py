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


def _batch():
    torch.manual_seed(3)
    s = torch.randn(12, 3, 6).log_softmax(-1)
    t = (torch.randn(12, 3, 6) * 3).log_softmax(-1)
    return s, t, torch.tensor([12, 9, 7]), torch.tensor([1, 2, 3, 4, 5, 1]), torch.tensor([2, 3, 1])


def test_the_terms_defaults_are_the_documented_ones():
    from offline_kd.losses.terms import (CodebookCE, CollapsedKL, CTCTerm, FeatureMSE, SequenceCTC, SoftKL, SpikeKL,
                                         kl_term, hybrid_terms)
    assert SoftKL().weight == CTCTerm().weight == SpikeKL().weight == 1.0 and SpikeKL().context == 2
    assert type(kl_term(1.0)) is SoftKL and type(kl_term(1.0, target="collapsed")) is CollapsedKL
    assert type(kl_term(1.0, "spikes")) is SpikeKL and kl_term(1.0, "spikes").context == 2
    assert hybrid_terms(0.7, 0.2, 0.1, None, kl_frames="spikes")[0].context == 2
    terms = hybrid_terms(0.7, 0.2, 0.1, {1: 1})
    assert [type(x) for x in terms] == [SoftKL, CTCTerm, FeatureMSE, SequenceCTC] and terms[-1].weight == 0
    assert type(hybrid_terms(0.7, 0.2, 0.1, {1: 1}, codebook=True)[2]) is CodebookCE
    s, t, lengths, labels, ll = _batch()
    t = t.clone()
    t[:, :, 0] += 8.0 * (torch.arange(12) % 6 != 0).float()[:, None]     # mostly blank: spikes every 6th frame
    assert not torch.equal(hybrid_loss(s, lengths, labels, ll, t, 2.0, 1.0, 0.0, 0.0, kl_frames="spikes",
                                       spike_context=2)[0],
                           hybrid_loss(s, lengths, labels, ll, t, 2.0, 1.0, 0.0, 0.0, kl_frames="spikes",
                                       spike_context=3)[0])          # (so that the default context is seen)
    for kw in ({"kl_frames": "all", "kl_target": "full"}, {"kl_frames": "spikes"}):
        explicit = dict(kw, spike_context=2) if kw.get("kl_frames") == "spikes" else kw
        assert torch.equal(hybrid_loss(s, lengths, labels, ll, t, 2.0, 0.7, 0.2, 0.0, **kw)[0],
                           hybrid_loss(s, lengths, labels, ll, t, 2.0, 0.7, 0.2, 0.0, **explicit)[0])
    assert torch.equal(hybrid_loss(s, lengths, labels, ll, t, 2.0, 0.7, 0.2, 0.0)[0],
                       hybrid_loss(s, lengths, labels, ll, t, 2.0, 0.7, 0.2, 0.0, kl_frames="all", kl_target="full")[0])
    assert hybrid_loss(s, lengths, labels, ll, t, 2.0, 0.7, 0.2, 0.0)[0].dtype == torch.float32


def test_per_utterance_weights_reach_every_kl_term_and_the_ctc_term():
    from offline_kd.losses.kd import collapsed_kd_loss, selected_kd_loss, weighted_ctc_loss
    from offline_kd.losses.terms import CollapsedKL, CTCTerm, LossInputs, SoftKL, SpikeKL
    s, t, lengths, labels, ll = _batch()
    w = torch.tensor([1.0, 0.0, 1.0])
    funcs = {SoftKL: lambda w: soft_kd_loss(s, t, lengths, 2.0, w),
             SpikeKL: lambda w: selected_kd_loss(s, t, lengths, 2.0, 2, w),
             CollapsedKL: lambda w: collapsed_kd_loss(s, t, lengths, 2.0, w)}
    for cls, fn in funcs.items():
        got = cls()(LossInputs(s, lengths, t, 2.0, kl_utterance_weights=w))
        assert torch.equal(got, fn(w)) and not torch.equal(got, fn(None)), cls.__name__
        assert torch.equal(hybrid_loss(s, lengths, labels, ll, t, 2.0, 1.0, 0.0, 0.0, kl_utterance_weights=w,
                                       kl_frames="spikes" if cls is SpikeKL else "all",
                                       kl_target="collapsed" if cls is CollapsedKL else "full")[0], fn(w))
    arange = torch.arange(3)
    got = CTCTerm()(LossInputs(s, lengths, t, labels=labels, label_lengths=ll, ctc_utterance_weights=w))
    assert torch.equal(got, weighted_ctc_loss(s, labels, lengths, ll, arange, w))
    assert torch.equal(hybrid_loss(s, lengths, labels, ll, t, 2.0, 0.0, 1.0, 0.0, ctc_utterance_weights=w)[0], got)
    entry = torch.tensor([0.5, 1.0, 2.0])
    got = CTCTerm()(LossInputs(s, lengths, t, labels=labels, label_lengths=ll, ctc_owner=arange, ctc_weights=entry,
                               ctc_utterance_weights=w))
    assert torch.equal(got, weighted_ctc_loss(s, labels, lengths, ll, arange, entry * w))


def test_the_hybrid_loss_passes_codebook_indexes_to_the_codebook_term():
    from offline_kd.losses.kd import codebook_loss
    s, t, lengths, labels, ll = _batch()
    logits = {1: torch.randn(3, 12, 2 * 4)}
    codes = {1: torch.randint(0, 4, (3, 12, 2))}
    total, terms = hybrid_loss(s, lengths, labels, ll, t, 2.0, 0.0, 0.0, 1.0, logits, {1: torch.randn(3, 12, 5)},
                               {1: 1}, teacher_codes=codes)
    assert torch.equal(terms["feature"], codebook_loss(logits, codes, {1: 1}, lengths))
