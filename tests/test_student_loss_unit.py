"""StudentLoss's per-utterance weights and pseudo-label choice without training (fast: the mutation script runs
it against offline_kd/losses/modules.py): confidence weighting with the LM's labels, `auto` resolved by the batch,
and the untranscribed weights of a batch."""

import numpy as np
import pytest
import torch

from offline_kd.config import AUTO_LM_LABELS
from offline_kd.data.targets import TeacherTargets


def test_confidence_weighting_with_lm_labels_scales_by_the_lm_1best_posterior():
    from offline_kd.config import DistillConfig
    from offline_kd.losses.kd import utterance_confidence
    from offline_kd.losses.modules import StudentLoss
    torch.manual_seed(0)
    lp = torch.randn(6, 2, 5).log_softmax(-1)
    t = TeacherTargets(lp, torch.tensor([6, 5]), {}, torch.tensor([3, 3]), torch.tensor([1, 1]),
                       nbest=[None, [(np.array([2]), 0.6), (np.array([4]), 0.4)]])
    labelled = torch.tensor([True, False])
    conf = utterance_confidence(lp, t.lengths)
    for labels, factor in (("greedy", 1.0), ("lm", 0.6), ("lm_1best", 0.6), ("auto", 0.6)):
        d = DistillConfig(confidence_weighting=True, pseudo_labels=labels, gamma=0.0)
        loss = StudentLoss(d, {}, {}, None, torch.device("cpu"))
        _, ctc_w = loss.utterance_weights(labelled, t)
        assert ctc_w.tolist() == pytest.approx([1.0, float(conf[1]) * factor])
    # a loss used on its own resolves auto by the batch: the LM's labels where its targets carry an N-best
    auto = StudentLoss(DistillConfig(pseudo_labels="auto", gamma=0.0), {}, {}, None, torch.device("cpu"))
    assert auto.pseudo_labels(t) == AUTO_LM_LABELS
    assert auto.pseudo_labels(TeacherTargets(lp, t.lengths, {}, t.tokens, t.token_lengths)) == "greedy"

