"""Every pair of distillation settings trains (#25 item 6): one short epoch of train-student for each row of a
pairwise covering array over `distill.pseudo_labels`, `distill.kd_start_epoch` (2 with one epoch of training: the
CTC warm-up branch), `distill.kl_frames`, `distill.kl_target`, views (a cache without / with 2 views) and
untranscribed splits (none / the tiny corpus's). The pairs the config refuses are refused with a one-line error.

The warm-up branch once called a function modules.py never imported (a NameError for `pseudo_labels: lm` with
`kd_start_epoch > 1`); it now calls `hybrid_loss` with only the CTC term, which must equal the plain CTC loss."""

import itertools

import numpy as np
import pytest
import torch

from helpers import QUIET, dump_cfg, step_records, student_dict, write_unigram_arpa
from offline_kd.commands import dump_teacher, train_student
from offline_kd.config import ExperimentConfig, build_dataclass
from offline_kd.data.corpus import Corpus
from offline_kd.errors import OfflineKDError
from offline_kd.losses.kd import ctc_loss, weighted_ctc_loss
from offline_kd.losses.terms import hybrid_loss

# the values each setting takes (every value DistillConfig accepts for the choice-valued keys)
FACTORS = {"pseudo_labels": ("greedy", "lm"), "kd_start_epoch": (1, 2), "kl_frames": ("all", "spikes"),
           "kl_target": ("full", "collapsed"), "views": (0, 2), "untranscribed": (False, True)}
NAMES = list(FACTORS)

# rows that train: together they hold every pair of values the config accepts (checked below)
TRAINS = [
    ("greedy", 1, "all", "full", 0, False),
    ("greedy", 1, "all", "collapsed", 0, True),
    ("greedy", 1, "spikes", "full", 2, False),
    ("greedy", 2, "all", "collapsed", 2, False),
    ("lm", 1, "all", "collapsed", 2, True),
    ("lm", 2, "spikes", "full", 0, True),
]
# rows the config refuses, each holding one refused pair: (row, what the one-line error says)
REFUSED = [
    (("greedy", 2, "spikes", "collapsed", 2, True), "kl_target collapsed works on all frames"),
    (("lm", 1, "all", "full", 0, False), "pseudo_labels: lm applies to untranscribed audio"),
]


def refused_pair(row: dict) -> bool:
    return (row["kl_frames"] == "spikes" and row["kl_target"] == "collapsed"
            or row["pseudo_labels"] == "lm" and not row["untranscribed"])


def _pairs(rows):
    return {(a, b, r[a], r[b]) for r in rows for a, b in itertools.combinations(NAMES, 2)}


def _row_id(row) -> str:
    return "-".join(f"{v}" if not isinstance(v, bool) else ("untr" if v else "no-untr") for v in row)


def test_the_rows_cover_every_pair():
    full = [dict(zip(NAMES, r)) for r in itertools.product(*FACTORS.values())]
    accepted = [r for r in full if not refused_pair(r)]
    trains = [dict(zip(NAMES, r)) for r in TRAINS]
    assert not any(refused_pair(r) for r in trains)
    assert _pairs(trains) == _pairs(accepted)                   # every accepted pair trains in some row
    refused = [dict(zip(NAMES, r)) for r, _ in REFUSED]
    assert all(refused_pair(r) for r in refused)
    missing = _pairs(full) - _pairs(accepted)                    # pairs found in no accepted row: the refused ones
    assert missing and missing <= _pairs(refused)


# one plain cache and one with 2 views (of train and untranscribed), each with the LM N-best of untranscribed
VIEWS = [{"speed": 0.9}, {"speed": 1.1}]


@pytest.fixture(scope="module")
def caches(tiny_teacher, tiny_corpus, tmp_path_factory):
    words = list(Corpus(tiny_corpus).vocab.tokens[1:])
    base = tmp_path_factory.mktemp("combinations")
    arpa = write_unigram_arpa(base / "lm.arpa", words, (words[0], words[1]))
    lm = {"lm": str(arpa), "splits": ["untranscribed"], "nbest": 2, "beam_width": 4, "num_processes": 1}
    out = {0: base / "plain.zarr", 2: base / "views.zarr"}
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, out[0], splits=["train", "untranscribed"], lm_targets=lm),
                     **QUIET)
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, out[2], splits=["train", "untranscribed"], lm_targets=lm,
                              views=VIEWS, view_splits=["train", "untranscribed"], view_seed=1), **QUIET)
    return out


def _cfg(row: dict, caches, corpus, out) -> ExperimentConfig:
    d = student_dict(corpus, caches[row["views"]], out, epochs=1, pseudo_labels=row["pseudo_labels"],
                     kd_start_epoch=row["kd_start_epoch"], kl_frames=row["kl_frames"], kl_target=row["kl_target"],
                     untranscribed_splits=["untranscribed"] if row["untranscribed"] else [])
    d["data"]["batch_size"] = 16
    return build_dataclass(ExperimentConfig, d)


@pytest.mark.parametrize("row", TRAINS, ids=_row_id)
def test_one_epoch_trains(row, caches, tiny_corpus, tmp_path):
    row = dict(zip(NAMES, row))
    res = train_student.run(_cfg(row, caches, tiny_corpus, tmp_path / "s"), **QUIET)
    assert (tmp_path / "s" / "checkpoint_last.pt").exists() and np.isfinite(res["best_dev_wer"])
    steps = step_records(tmp_path / "s")
    assert steps and all(np.isfinite(s["train/total"]) for s in steps)
    if row["kd_start_epoch"] > 1:             # the warm-up epoch: CTC alone, the same number as the total
        assert all("train/soft" not in s and s["train/ctc"] == s["train/total"] for s in steps)
    else:
        assert all("train/soft" in s and "train/feature" in s for s in steps)


@pytest.mark.parametrize("row,msg", REFUSED, ids=[_row_id(r) for r, _ in REFUSED])
def test_refused_combinations_are_one_line_errors(row, msg, caches, tiny_corpus, tmp_path):
    row = dict(zip(NAMES, row))
    with pytest.raises(OfflineKDError, match=msg) as e:
        train_student.run(_cfg(row, caches, tiny_corpus, tmp_path / "s"), **QUIET)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "s" / "checkpoint_last.pt").exists()


@pytest.mark.parametrize("weighted", [False, True], ids=["ctc", "weighted-ctc"])
def test_hybrid_loss_with_ctc_alone_is_the_ctc_loss_bit_for_bit(weighted):
    """What the warm-up branch relies on: alpha = gamma = seq_weight = 0, beta = 1 give the CTC (or N-best weighted
    CTC) loss itself, the same value and gradient, with the terms ctc and total."""
    torch.manual_seed(0)
    logits = torch.randn(12, 3, 6, requires_grad=True)
    lengths, labels, ll = torch.tensor([12, 10, 7]), torch.tensor([1, 2, 3, 2, 4, 5, 5]), torch.tensor([2, 3, 1, 1])
    owner, w = torch.tensor([0, 1, 2, 2]), torch.tensor([1.0, 1.0, 0.25, 0.75])
    if not weighted:
        labels, ll, owner, w = labels[:6], ll[:3], None, None

    def grad_of(f):
        logits.grad = None
        loss = f(logits.log_softmax(-1))
        loss[0].backward() if isinstance(loss, tuple) else loss.backward()
        return loss, logits.grad.clone()
    ref, ref_grad = grad_of(lambda lp: ctc_loss(lp, labels, lengths, ll) if owner is None else
                            weighted_ctc_loss(lp, labels, lengths, ll, owner, w))
    (total, terms), grad = grad_of(lambda lp: hybrid_loss(lp, lengths, labels, ll, torch.zeros(12, 3, 6), 2.0,
                                                          0.0, 1.0, 0.0, seq_weight=0.0, ctc_owner=owner,
                                                          ctc_weights=w))
    assert sorted(terms) == ["ctc", "total"]
    assert torch.equal(total, ref) and torch.equal(terms["ctc"], ref) and torch.equal(terms["total"], ref)
    assert total.dtype == ref.dtype and torch.equal(grad, ref_grad)
