"""Blank-aware distillation terms (issue #17): KL on the frames around the teacher's spikes, KL over the
(blank, token, rest) collapse, and a CTC warm-up before distillation starts. Values against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from offline_kd.config import DistillConfig, build_dataclass
from offline_kd.errors import OfflineKDError
from offline_kd.losses.kd import collapsed_kd_loss, selected_kd_loss, soft_kd_loss, spike_frames
from offline_kd.losses.terms import hybrid_loss


def _peaky(argmax_rows: list[list[int]], V=6, peak=4.0, seed=0) -> torch.Tensor:
    """(T, B, V) log-probs whose per-frame argmax is the given token."""
    g = torch.Generator().manual_seed(seed)
    T, B = len(argmax_rows[0]), len(argmax_rows)
    z = torch.randn(T, B, V, generator=g)
    for b, row in enumerate(argmax_rows):
        for f, tok in enumerate(row):
            z[f, b, tok] += peak + 10
    return z.log_softmax(-1)


def test_spike_frames_keep_context_around_non_blank_argmax():
    t = _peaky([[0, 0, 3, 0, 0, 0, 0, 5], [0, 2, 0, 0, 0, 0, 4, 0]])
    lengths = torch.tensor([8, 6])                       # the second utterance's spike at frame 6 is padding
    sel = spike_frames(t, lengths, context=1)
    assert sel[:, 0].nonzero().flatten().tolist() == [1, 2, 3, 6, 7]
    assert sel[:, 1].nonzero().flatten().tolist() == [0, 1, 2, 5]     # frame 5 is next to the padded spike 6
    assert spike_frames(t, lengths, context=0)[:, 0].nonzero().flatten().tolist() == [2, 7]


def test_selected_kl_is_the_soft_kl_over_the_selected_frames_only():
    t = _peaky([[0, 0, 3, 0, 0, 0, 0, 5], [0, 2, 0, 0, 0, 0, 0, 0]])
    s = torch.randn(8, 2, 6, generator=torch.Generator().manual_seed(1)).log_softmax(-1)
    lengths = torch.tensor([8, 5])
    T = 2.0
    got = selected_kd_loss(s, t, lengths, T, context=1).item()
    frames = [(1, 0), (2, 0), (3, 0), (6, 0), (7, 0), (0, 1), (1, 1), (2, 1)]
    per = [soft_kd_loss(s[f:f + 1, b:b + 1], t[f:f + 1, b:b + 1], torch.tensor([1]), T).item() for f, b in frames]
    assert got == pytest.approx(float(np.mean(per)), rel=1e-5)
    assert got != pytest.approx(soft_kd_loss(s, t, lengths, T).item(), rel=1e-3)
    no_spike = _peaky([[0, 0, 0]])
    assert selected_kd_loss(s[:3, :1], no_spike, torch.tensor([3]), T, 1).item() == 0.0


def test_collapsed_kl_hand_computed():
    p = torch.tensor([0.6, 0.1, 0.25, 0.05])           # teacher: blank .6, its token 2 (.25), rest .15
    q = torch.tensor([0.3, 0.3, 0.2, 0.2])              # student: blank .3, token 2 .2, rest .5
    got = collapsed_kd_loss(q.log()[None, None], p.log()[None, None], torch.tensor([1]), 1.0).item()
    expected = 0.6 * math.log(0.6 / 0.3) + 0.25 * math.log(0.25 / 0.2) + 0.15 * math.log(0.15 / 0.5)
    assert got == pytest.approx(expected, rel=1e-5)
    # T scaling: collapses of the tempered distributions, times T^2
    T = 3.0
    pt, qt = torch.softmax(p.log() / T, -1), torch.softmax(q.log() / T, -1)
    ct = torch.stack([pt[0], pt[2], pt[1] + pt[3]])
    cq = torch.stack([qt[0], qt[2], qt[1] + qt[3]])
    want = (ct * (ct / cq).log()).sum().item() * T * T
    assert collapsed_kd_loss(q.log()[None, None], p.log()[None, None], torch.tensor([1]), T).item() == \
        pytest.approx(want, rel=1e-5)


def test_hybrid_loss_dispatches_to_the_chosen_kl():
    t = _peaky([[0, 3, 0, 0], [2, 0, 0, 0]])
    s = torch.randn(4, 2, 6, generator=torch.Generator().manual_seed(2)).log_softmax(-1)
    lengths, labels, ll = torch.tensor([4, 3]), torch.tensor([3, 2]), torch.tensor([1, 1])
    for kw, fn in (({}, lambda: soft_kd_loss(s, t, lengths, 2.0)),
                   ({"kl_frames": "spikes", "spike_context": 1}, lambda: selected_kd_loss(s, t, lengths, 2.0, 1)),
                   ({"kl_target": "collapsed"}, lambda: collapsed_kd_loss(s, t, lengths, 2.0))):
        _, terms = hybrid_loss(s, lengths, labels, ll, t, 2.0, 1.0, 0.0, 0.0, **kw)
        assert terms["soft"].item() == pytest.approx(fn().item(), rel=1e-6), kw


@pytest.mark.parametrize("change,message", [({"kl_frames": "some"}, "kl_frames"), ({"kl_target": "x"}, "kl_target"),
                                            ({"spike_context": -1}, "spike_context"),
                                            ({"kd_start_epoch": 0}, "kd_start_epoch"),
                                            ({"kl_target": "collapsed", "kl_frames": "spikes"}, "collapsed")])
def test_bad_options_are_one_line_errors(change, message):
    with pytest.raises(OfflineKDError, match=message):
        build_dataclass(DistillConfig, change)


def test_kd_start_epoch_trains_on_ctc_alone_before_it():
    from offline_kd.data.targets import TeacherTargets
    from offline_kd.losses.kd import ctc_loss
    from offline_kd.losses.modules import StudentLoss
    from offline_kd.models.augment import SpecAugment
    from offline_kd.config import AugmentConfig, ModelConfig
    from offline_kd.models.bilstm import BiLSTMCTC
    torch.manual_seed(0)
    model = BiLSTMCTC(ModelConfig(input_dim=4, hidden_dim=8, num_layers=2, num_classes=6))
    d = build_dataclass(DistillConfig, {"kd_start_epoch": 3, "layer_mapping": {1: 1}, "seq_weight": 0.2})
    loss_fn = StudentLoss(d, model.hidden_size, {1: 16}, SpecAugment(AugmentConfig(), False),
                               torch.device("cpu"))
    x = torch.randn(2, 8, 4)
    lengths = torch.tensor([8, 6])
    model.eval()                                        # no dropout: the two forward passes agree
    lp, out_len = model(x, lengths)
    teacher = TeacherTargets.from_best_paths(_peaky([[0, 3, 0, 0], [2, 0, 0, 0]]), out_len,
                                             {1: torch.randn(2, 4, 16)}, [np.array([0, 3, 0, 0]), np.array([2, 0, 0])])
    batch = {"features": x, "feature_lengths": lengths, "labels": torch.tensor([1, 2, 3]),
             "label_lengths": torch.tensor([2, 1]), "teacher": teacher, "utterance_ids": ["a", "b"]}
    loss, terms = loss_fn(model, batch, 2)
    assert set(terms) == {"ctc", "total"}
    assert loss.item() == pytest.approx(ctc_loss(lp, batch["labels"], out_len, batch["label_lengths"]).item(), rel=1e-6)
    _, terms = loss_fn(model, batch, 3)
    assert {"soft", "ctc", "feature", "seq", "total"} <= set(terms)
    assert loss_fn.scalars(2)["train/kd_active"] == 0.0 and loss_fn.scalars(3)["train/kd_active"] == 1.0


def test_empty_selections_give_float32_zeros_and_a_longer_teacher_is_cut_to_the_student():
    s = torch.randn(4, 2, 6, generator=torch.Generator().manual_seed(3)).log_softmax(-1)
    t = _peaky([[0, 3, 0, 0], [2, 0, 0, 0]])
    for fn in (lambda a, b, n: soft_kd_loss(a, b, n, 2.0), lambda a, b, n: selected_kd_loss(a, b, n, 2.0, 1),
               lambda a, b, n: collapsed_kd_loss(a, b, n, 2.0)):
        zero = fn(s.half(), t.half(), torch.tensor([0, 0]))
        assert zero.item() == 0.0 and zero.dtype == torch.float32 and zero.shape == ()
        longer = torch.cat([t, _peaky([[4, 4], [5, 5]], seed=9)], 0)     # two extra teacher frames, with spikes
        assert fn(s, longer, torch.tensor([4, 3])).item() == pytest.approx(fn(s, t, torch.tensor([4, 3])).item(),
                                                                          rel=1e-6)
    no_spike = _peaky([[0, 0, 0, 0], [0, 0, 0, 0]])
    zero = selected_kd_loss(s.half(), no_spike.half(), torch.tensor([4, 3]), 2.0, 1)
    assert zero.item() == 0.0 and zero.dtype == torch.float32 and zero.shape == ()
