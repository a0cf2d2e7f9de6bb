"""KL targets that agree with the CTC label (distill.kl_label_mix, losses/aligned.py): the forced alignment, the mix,
and StudentLoss's use of them with transcripts, greedy and LM pseudo-labels (fast: no training)."""

import itertools

import numpy as np
import pytest
import torch

from offline_kd.config import DistillConfig
from offline_kd.data.targets import TeacherTargets
from offline_kd.errors import OfflineKDError
from offline_kd.losses.aligned import ctc_forced_path, label_aligned_targets
from offline_kd.losses.modules import StudentLoss


def _posteriors(path: list, v: int = 5, sure: float = 6.0, seed: int = 0) -> torch.Tensor:
    """(T, 1, V) log-probs whose frame-wise argmax is `path`."""
    x = torch.randn(len(path), 1, v, generator=torch.Generator().manual_seed(seed)) * 0.3
    x[torch.arange(len(path)), 0, torch.tensor(path)] += sure
    return x.log_softmax(-1)


def _collapse(frames: list, blank: int = 0) -> list:
    return [c for c, _ in itertools.groupby(frames) if c != blank]


def _brute_force_best(lp: torch.Tensor, label: list) -> float:
    """The best path score spelling `label`, over every frame path (tiny T and V only)."""
    t, _, v = lp.shape
    best = -float("inf")
    for frames in itertools.product(range(v), repeat=t):
        if _collapse(list(frames)) == label:
            best = max(best, float(sum(lp[i, 0, c] for i, c in enumerate(frames))))
    return best


@pytest.mark.parametrize("label", [[1, 2, 3], [1, 4, 3], [1, 1, 3], [2], [], [3, 3]])
def test_the_forced_path_spells_the_label_at_the_teachers_best_score(label):
    lp = _posteriors([0, 1, 0, 2, 0, 3])
    path, ok = ctc_forced_path(lp, torch.tensor([6]), torch.tensor(label, dtype=torch.long), torch.tensor([len(label)]))
    frames = path[0].tolist()
    assert bool(ok[0]) and _collapse(frames) == label
    score = float(sum(lp[i, 0, c] for i, c in enumerate(frames)))
    assert score == pytest.approx(_brute_force_best(lp, label), abs=1e-4)


def test_a_batch_aligns_each_utterance_as_alone_and_a_label_too_long_is_flagged():
    a, b = _posteriors([0, 1, 0, 0, 2, 0, 0, 3, 0]), _posteriors([0, 2, 0, 0], seed=1)
    lp = torch.cat([a, torch.cat([b, torch.zeros(5, 1, 5).log_softmax(-1)])], 1)
    labels, lengths = torch.tensor([1, 4, 3, 2, 2, 2]), torch.tensor([3, 3])
    path, ok = ctc_forced_path(lp, torch.tensor([9, 4]), labels, lengths)
    alone, _ = ctc_forced_path(a, torch.tensor([9]), labels[:3], lengths[:1])
    assert torch.equal(path[0], alone[0]) and path[0].tolist() == [0, 1, 0, 0, 4, 0, 0, 3, 0]
    assert ok.tolist() == [True, False]         # 2 2 2 needs 5 frames (blanks between repeats), utterance 2 has 4
    assert path[1, 4:].tolist() == [0] * 5      # frames past its end: blank


@pytest.mark.parametrize("frames, label", [([1, 2, 3], [1, 2, 3]), ([3], [3]), ([0, 2], [2]), ([4, 0, 4], [4, 4])])
def test_a_label_that_fills_every_frame_starts_on_its_first_token_and_the_frames_past_the_end_stay_blank(frames, label):
    """No blank between two different tokens, a path that starts on a token, one that ends on one; a longer
    batch-mate pads the utterance."""
    lp = torch.cat([_posteriors(frames + [0] * 3), _posteriors([0, 1, 0, 0, 2, 0], seed=4)[:len(frames) + 3]], 1)
    path, ok = ctc_forced_path(lp, torch.tensor([len(frames), len(frames) + 3]),
                               torch.tensor(label + [1, 2]), torch.tensor([len(label), 2]))
    assert bool(ok[0]) and path[0, :len(frames)].tolist() == frames
    assert path[0, len(frames):].tolist() == [0] * 3


def test_the_mix_makes_the_label_the_argmax_keeps_the_rest_and_leaves_an_unalignable_utterance_alone():
    lp = torch.cat([_posteriors([0, 1, 0, 2, 0, 3]), _posteriors([0, 1, 0, 0, 0, 0], seed=2)], 1)
    labels, lengths = torch.tensor([1, 4, 3, 1, 1, 1, 1]), torch.tensor([3, 4])     # utterance 2: 4 repeats, 6 frames
    out = label_aligned_targets(lp, torch.tensor([6, 6]), labels, lengths, 0.6)
    assert _collapse(out[:, 0].argmax(-1).tolist()) == [1, 4, 3]
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(6, 2))
    path, _ = ctc_forced_path(lp[:, :1], torch.tensor([6]), labels[:3], lengths[:1])
    off = torch.ones(6, 5, dtype=torch.bool)
    off[torch.arange(6), path[0]] = False
    torch.testing.assert_close(out[:, 0].exp()[off], 0.4 * lp[:, 0].exp()[off])     # the others scaled by 1 - mix
    assert torch.equal(out[:, 1], lp[:, 1])
    assert label_aligned_targets(lp, torch.tensor([6, 6]), labels, lengths, 0.0) is lp


def _loss(**kw) -> StudentLoss:
    return StudentLoss(DistillConfig(gamma=0.0, **kw), {}, {}, None, torch.device("cpu"))


def test_student_loss_aligns_the_transcript_the_greedy_label_or_the_lm_1best():
    lp = torch.cat([_posteriors([0, 1, 0, 2, 0, 3]), _posteriors([0, 2, 0, 2, 0, 0], seed=3)], 1)
    t = TeacherTargets(lp, torch.tensor([6, 6]), {}, torch.tensor([1, 2, 3, 2, 2]), torch.tensor([3, 2]),
                       nbest=[None, [(np.array([4, 2]), 0.7), (np.array([2, 2]), 0.3)]])
    refs = (torch.tensor([1, 4, 3, 2]), torch.tensor([3, 1]), torch.tensor([True, False]))
    assert _loss().kl_teacher(t, refs, "greedy", (None, None, None)) is lp            # off: the teacher's own
    for which, want in (("greedy", [2, 2]), ("lm_1best", [4, 2]), ("lm", [4, 2])):
        loss = _loss(kl_label_mix=0.75, pseudo_labels=which)
        if which == "greedy":
            labels, label_lengths, owner = *t.hard_labels(*refs), None
        else:
            labels, label_lengths, owner, _ = t.nbest_labels(*refs, top=1 if which == "lm_1best" else None)
        out = loss.kl_teacher(t, refs, which, (labels, label_lengths, owner))
        assert _collapse(out[:, 0].argmax(-1).tolist()) == [1, 4, 3]                   # the transcript
        assert _collapse(out[:, 1].argmax(-1).tolist()) == want, which


@pytest.mark.parametrize("mix", [-0.1, 1.5])
def test_a_mix_outside_0_1_is_refused(mix):
    with pytest.raises(OfflineKDError, match="distill.kl_label_mix must be in"):
        DistillConfig(kl_label_mix=mix)
