"""Confidence-aware pseudo-labels (#31 items 1 and 2): the dump stores the teacher's confidence in each utterance's
1-best (sealed, printed by cache info), train-student filters untranscribed utterances by it and weights their loss
terms (their own KL / CTC weights, the CTC times the confidence), from the cache and live alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from helpers import QUIET, dump_cfg, offline_and_online_steps, student_dict
from offline_kd.cache import confidence
from offline_kd.cache.reader import TeacherCache
from offline_kd.cli import main
from offline_kd.commands import dump_teacher, train_student
from offline_kd.config import ExperimentConfig, build_dataclass
from offline_kd.errors import OfflineKDError
from offline_kd.losses.kd import utterance_confidence
from offline_kd.losses.terms import hybrid_loss

SPLITS = ["train", "untranscribed", "dev"]


@pytest.fixture(scope="module")
def u_cache(tiny_teacher, tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("conf") / "u.zarr"
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, out, splits=SPLITS), **QUIET)
    return out


def test_the_dump_stores_each_utterances_confidence_sealed(u_cache, tmp_path):
    cache = TeacherCache(str(u_cache))
    for name in SPLITS:
        split = cache.split(name)
        assert split.confidence.shape == (len(split),)
        for p in range(0, len(split), 7):
            got = split.read(p)
            lp, best = got["log_probs"], got["best_path"]
            spoken = best != 0
            p_best = np.exp(lp.max(-1))
            want = p_best[spoken].mean() if spoken.any() else p_best.mean()
            assert split.confidence[p] == pytest.approx(want, rel=1e-5)
            t = torch.from_numpy(lp)[:, None]
            assert float(utterance_confidence(t, torch.tensor([len(lp)]))[0]) == pytest.approx(want, rel=1e-5)
    assert 0 < cache.split("untranscribed").confidence.min() <= cache.split("untranscribed").confidence.max() <= 1
    info = CliRunner().invoke(main, ["cache", "info", str(u_cache)])
    assert "split untranscribed: 48/48 utterances" in info.output and "teacher confidence p10" in info.output
    # sealed: a changed confidence is found by cache verify
    import shutil
    copy = tmp_path / "copy.zarr"
    shutil.copytree(u_cache, copy)
    arr = zarr.open_group(str(copy), mode="r+")["untranscribed"][confidence.NAME]
    arr[0] = 0.0
    res = CliRunner().invoke(main, ["cache", "verify", str(copy)])
    assert res.exit_code != 0 and "untranscribed/confidence" in res.output, res.output


def test_min_confidence_keeps_the_confident_share_and_logs_it(u_cache, tiny_corpus, tmp_path):
    conf = TeacherCache(str(u_cache)).split("untranscribed").confidence
    threshold = float(np.median(conf))
    lines = []
    d = student_dict(tiny_corpus, u_cache, tmp_path / "run", epochs=1, untranscribed_splits=["untranscribed"],
                     min_confidence=threshold)
    train_student.run(build_dataclass(ExperimentConfig, d), log=lines.append)
    kept = int((conf >= threshold).sum())
    assert any(x.startswith("teacher confidence on 'untranscribed' (the mean posterior of its 1-best's tokens): "
                            f"median {np.median(conf):.3f}") for x in lines), lines
    assert any(f"{kept} of 48 untranscribed utterances of 'untranscribed' kept" in x for x in lines), lines
    d["distill"]["min_confidence"] = 1.0
    d["train"]["output_dir"] = str(tmp_path / "none")
    with pytest.raises(OfflineKDError, match="no untranscribed utterance of 'untranscribed' reaches it"):
        train_student.run(build_dataclass(ExperimentConfig, d), **QUIET)


def test_utterance_weights_scale_their_share_and_weights_of_one_change_nothing():
    torch.manual_seed(0)
    s = torch.randn(9, 3, 5).log_softmax(-1)
    t = torch.randn(9, 3, 5).log_softmax(-1)
    lengths = torch.tensor([9, 7, 4])
    labels, label_lengths = torch.tensor([1, 2, 3, 1, 4, 2]), torch.tensor([2, 3, 1])
    args = (s, lengths, labels, label_lengths, t, 2.0, 0.7, 0.2, 0.0)
    _, base = hybrid_loss(*args)
    _, ones = hybrid_loss(*args, kl_utterance_weights=torch.ones(3), ctc_utterance_weights=torch.ones(3))
    assert ones["soft"] == pytest.approx(float(base["soft"]), rel=1e-6)
    assert ones["ctc"] == pytest.approx(float(base["ctc"]), rel=1e-5)
    _, half = hybrid_loss(*args, kl_utterance_weights=torch.tensor([1.0, 0.0, 1.0]),
                          ctc_utterance_weights=torch.tensor([0.0, 1.0, 0.0]))
    per_ctc = torch.nn.functional.ctc_loss(s, labels, lengths, label_lengths, reduction="none", zero_infinity=True)
    assert half["ctc"] == pytest.approx(float(per_ctc[1] / 3 / 3), rel=1e-5)
    from offline_kd.losses.kd import _kl, _tempered, frame_mask
    sl, tl = _tempered(s, t, 2.0)
    kl = _kl(tl, sl)
    mask = frame_mask(lengths, 9).transpose(0, 1)
    want = (kl[:, [0, 2]] * mask[:, [0, 2]]).sum() / mask.sum() * 4
    assert half["soft"] == pytest.approx(float(want), rel=1e-5)


def test_untranscribed_weights_and_confidence_weighting_from_the_cache_and_live(u_cache, tiny_teacher, tiny_corpus,
                                                                                 tmp_path):
    opts = dict(untranscribed_splits=["untranscribed"], untranscribed_alpha=1.4, untranscribed_beta=0.05,
                confidence_weighting=True)
    cfgs = [build_dataclass(ExperimentConfig, student_dict(tiny_corpus, u_cache, tmp_path / n, epochs=1, **opts))
            for n in ("off", "on")]
    a, b = offline_and_online_steps(*cfgs, tiny_teacher)
    assert len(a) == len(b) > 3
    for x, y in zip(a, b):
        for k in ("train/soft", "train/ctc", "train/total"):
            assert x[k] == pytest.approx(y[k], rel=1e-4, abs=1e-6), (x["step"], k)
    # the weights change the loss: the same run without them differs
    plain = build_dataclass(ExperimentConfig, student_dict(tiny_corpus, u_cache, tmp_path / "plain", epochs=1,
                                                           untranscribed_splits=["untranscribed"]))
    train_student.run(plain, **QUIET)
    from helpers import step_records
    c = step_records(tmp_path / "plain")
    assert any(abs(x["train/total"] - y["train/total"]) > 1e-4 for x, y in zip(a, c))


@pytest.mark.parametrize("distill, expect", [
    ({"alpha": 0.0, "untranscribed_alpha": 0.5}, "distill.untranscribed_alpha weighs untranscribed utterances"),
    ({"untranscribed_beta": -1.0}, "distill.untranscribed_beta must be >= 0"),
    ({"min_confidence": 1.5}, "distill.min_confidence must be in [0, 1]"),
])
def test_bad_settings_are_one_line_errors(tiny_corpus, u_cache, tmp_path, distill, expect):
    with pytest.raises(OfflineKDError) as err:
        build_dataclass(ExperimentConfig, student_dict(tiny_corpus, u_cache, tmp_path / "r", **distill))
    assert expect in str(err.value) and "\n" not in str(err.value)


def test_min_confidence_needs_a_cache(u_cache, tiny_teacher, tiny_corpus, tmp_path):
    d = student_dict(tiny_corpus, u_cache, tmp_path / "r", epochs=1, untranscribed_splits=["untranscribed"],
                     min_confidence=0.5)
    with pytest.raises(OfflineKDError, match="with `online_teacher` leave it out"):
        train_student.run(build_dataclass(ExperimentConfig, d), online_teacher=str(tiny_teacher), **QUIET)


def test_utterance_weights_reach_every_kl_variant_and_the_nbest_ctc():
    from offline_kd.losses.kd import collapsed_kd_loss, selected_kd_loss, soft_kd_loss, weighted_ctc_loss
    torch.manual_seed(1)
    s = torch.randn(9, 3, 5).log_softmax(-1)
    t = (torch.randn(9, 3, 5) * 3).log_softmax(-1)
    lengths = torch.tensor([9, 7, 4])
    labels, label_lengths = torch.tensor([1, 2, 3, 1, 4, 2]), torch.tensor([2, 3, 1])
    w = torch.tensor([1.0, 0.0, 2.0])
    args = (s, lengths, labels, label_lengths, t, 2.0, 0.7, 0.2, 0.0)
    for kw, fn in (({}, lambda x: soft_kd_loss(s, t, lengths, 2.0, x)),
                   ({"kl_frames": "spikes", "spike_context": 1}, lambda x: selected_kd_loss(s, t, lengths, 2.0, 1, x)),
                   ({"kl_target": "collapsed"}, lambda x: collapsed_kd_loss(s, t, lengths, 2.0, x))):
        _, plain = hybrid_loss(*args, **kw)
        _, weighted = hybrid_loss(*args, **kw, kl_utterance_weights=w)
        assert float(plain["soft"]) == pytest.approx(float(fn(None)), rel=1e-6)
        assert float(weighted["soft"]) == pytest.approx(float(fn(w)), rel=1e-6)
        assert abs(float(weighted["soft"]) - float(plain["soft"])) > 1e-4
    # an N-best (two hypotheses for utterance 0, one each for 1 and 2) times per-utterance weights
    owner, nbw = torch.tensor([0, 0, 1, 2]), torch.tensor([0.75, 0.25, 1.0, 1.0])
    nb_labels, nb_lengths = torch.tensor([1, 2, 2, 3, 1, 4, 2]), torch.tensor([2, 1, 3, 1])
    _, got = hybrid_loss(s, lengths, nb_labels, nb_lengths, t, 2.0, 0.0, 1.0, 0.0, ctc_owner=owner, ctc_weights=nbw,
                         ctc_utterance_weights=torch.tensor([0.5, 1.0, 0.0]))
    want = weighted_ctc_loss(s, nb_labels, lengths, nb_lengths, owner, nbw * torch.tensor([0.5, 0.5, 1.0, 0.0]))
    assert float(got["ctc"]) == pytest.approx(float(want), rel=1e-6)
