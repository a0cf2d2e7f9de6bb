import math

import jiwer
import pytest
import torch

from offline_kd.decoding.greedy import greedy_ids
from offline_kd.decoding.metrics import error_rates


def test_greedy_collapses_repeats_and_drops_blanks():
    # frames argmax: 1 1 0 1 2 2 0 0 3 ; second utterance only 2 valid frames: 2 2
    path = [1, 1, 0, 1, 2, 2, 0, 0, 3]
    lp = torch.full((9, 2, 4), -10.0)
    for t, k in enumerate(path):
        lp[t, 0, k] = 0.0
    lp[:, 1, 2] = 0.0
    assert greedy_ids(lp, torch.tensor([9, 2])) == [[1, 1, 2, 3], [2]]


def test_wer_cer_equal_jiwer_pooled():
    refs = ["the cat sat", "on the mat today", "hello"]
    hyps = ["the cat sit", "on mat today", "hello world"]
    r = error_rates(refs, hyps)
    assert r["wer"] == pytest.approx(100 * jiwer.wer(refs, hyps))
    assert r["cer"] == pytest.approx(100 * jiwer.cer(refs, hyps))
    # pooled: 1 sub + 1 del + 1 ins over 8 words (not a mean of per-utterance rates)
    assert r["wer"] == pytest.approx(100 * 3 / 8)


def test_empty_reference_is_skipped():
    r = error_rates(["", "a b"], ["x", "a b"])
    assert r["wer"] == 0.0
    assert math.isnan(error_rates([""], ["x"])["wer"])
