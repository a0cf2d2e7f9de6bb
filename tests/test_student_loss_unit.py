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


def test_utterance_weights_of_a_batch():
    """Labelled utterances weigh 1; untranscribed ones untranscribed_alpha / alpha on the KL and untranscribed_beta /
    beta times their confidence on the CTC."""
    from types import SimpleNamespace
    from offline_kd.config import DistillConfig
    from offline_kd.losses.modules import StudentLoss
    lp = torch.log(torch.tensor([[[0.1, 0.9], [0.8, 0.2]], [[0.3, 0.7], [0.6, 0.4]]]))       # (T 2, B 2, V 2)
    t = SimpleNamespace(log_probs=lp, lengths=torch.tensor([2, 2]))
    labelled = torch.tensor([True, False])
    conf_1 = (0.8 + 0.6) / 2          # utterance 1: both frames' argmax is blank, so the mean over all frames
    d = DistillConfig(alpha=0.5, beta=1.0, untranscribed_alpha=1.0, untranscribed_beta=0.25, confidence_weighting=True)
    kl_w, ctc_w = StudentLoss.utterance_weights(SimpleNamespace(d=d, device=torch.device("cpu")), labelled, t)
    torch.testing.assert_close(kl_w, torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(ctc_w, torch.tensor([1.0, 0.25 * conf_1]))
    only = DistillConfig(confidence_weighting=True)
    kl_w, ctc_w = StudentLoss.utterance_weights(SimpleNamespace(d=only, device=torch.device("cpu")), labelled, t)
    assert kl_w is None
    torch.testing.assert_close(ctc_w, torch.tensor([1.0, conf_1]))
    none = StudentLoss.utterance_weights(SimpleNamespace(d=DistillConfig(), device=torch.device("cpu")),
                                              labelled, t)
    assert none == (None, None)



def test_lm_weights_combine_with_the_untranscribed_weights_and_all_labelled_batches_weigh_nothing():
    from offline_kd.config import DistillConfig
    from offline_kd.losses.kd import utterance_confidence
    from offline_kd.losses.modules import StudentLoss
    torch.manual_seed(0)
    lp = torch.randn(6, 2, 5).log_softmax(-1)
    t = TeacherTargets(lp, torch.tensor([6, 5]), {}, torch.tensor([3, 3]), torch.tensor([1, 1]),
                       nbest=[None, [(np.array([2]), 0.6), (np.array([4]), 0.4)]])
    d = DistillConfig(alpha=0.5, beta=2.0, untranscribed_alpha=1.5, untranscribed_beta=0.5, confidence_weighting=True,
                      pseudo_labels="lm_1best", gamma=0.0)
    loss = StudentLoss(d, {}, {}, None, torch.device("cpu"))
    kl_w, ctc_w = loss.utterance_weights(torch.tensor([True, False]), t)
    conf = float(utterance_confidence(lp, t.lengths)[1])
    assert kl_w.tolist() == pytest.approx([1.0, 3.0]) and ctc_w.tolist() == pytest.approx([1.0, 0.25 * conf * 0.6])
    assert loss.utterance_weights(torch.tensor([True, True]), t) == (None, None)
    assert loss.utterance_weights(None, t) == (None, None)
