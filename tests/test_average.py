"""train.average: checkpoint_avg.pt is the mean of the kept epochs' weights (the last N, or the N best on dev),
evaluated on dev and logged, and a killed and resumed run writes the same average."""

from __future__ import annotations

import json

import torch

from helpers import QUIET, experiment_dict, killed_after
from offline_kd.commands import train
from offline_kd.config import ExperimentConfig, build_dataclass
from offline_kd.models.checkpoint import load_checkpoint


def _cfg(tiny_corpus, out, **train_kw):
    return build_dataclass(ExperimentConfig, experiment_dict(tiny_corpus, out, epochs=4, **train_kw))


def _records(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_the_average_of_the_last_epochs_is_their_mean_and_is_evaluated(tiny_corpus, tmp_path):
    out = tmp_path / "run"
    train.run(_cfg(tiny_corpus, out, average=3), **QUIET)
    avg = load_checkpoint(out / "checkpoint_avg.pt")
    assert avg["averaged_epochs"] == [2, 3, 4]
    kept = [torch.load(out / "average" / f"epoch-{e}.pt", weights_only=True) for e in (2, 3, 4)]
    assert not (out / "average" / "epoch-1.pt").exists()
    for k, v in avg["model_state_dict"].items():
        want = torch.stack([s[k].double() for s in kept]).mean(0).to(v.dtype)
        assert torch.equal(v, want), k
    rec = [r for r in _records(out) if r["event"] == "average"]
    assert len(rec) == 1 and rec[0]["epochs"] == [2, 3, 4] and rec[0]["dev_wer"] == avg["dev"]["wer"]
    # a checkpoint like any other: it loads and evaluates
    from offline_kd.training import evaluation
    assert evaluation.run(str(out / "checkpoint_avg.pt"), "dev", device="cpu", **QUIET)["wer"] == avg["dev"]["wer"]


def test_the_best_epochs_are_those_of_lowest_dev_wer(tiny_corpus, tmp_path):
    out = tmp_path / "best"
    train.run(_cfg(tiny_corpus, out, average=2, average_of="best"), **QUIET)
    epochs = [r for r in _records(out) if r["event"] == "epoch"]
    best = sorted(epochs, key=lambda r: (r["dev_wer"], -r["epoch"]))[:2]
    assert load_checkpoint(out / "checkpoint_avg.pt")["averaged_epochs"] == sorted(r["epoch"] for r in best)


def test_a_killed_and_resumed_run_writes_the_same_average(tiny_corpus, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    train.run(_cfg(tiny_corpus, full, average=3), **QUIET)
    killed_after(train.run, _cfg(tiny_corpus, cut, average=3), 2)
    assert not (cut / "checkpoint_avg.pt").exists()
    train.run(_cfg(tiny_corpus, cut, average=3), resume=True, **QUIET)
    a, b = load_checkpoint(full / "checkpoint_avg.pt"), load_checkpoint(cut / "checkpoint_avg.pt")
    assert a["averaged_epochs"] == b["averaged_epochs"]
    assert all(torch.equal(a["model_state_dict"][k], b["model_state_dict"][k]) for k in a["model_state_dict"])


def test_averaging_may_be_switched_on_when_a_run_is_resumed(tiny_corpus, tmp_path):
    """train.average changes nothing the run has computed: a resumed run may turn it on, and averages the epochs
    it keeps from then on; the weights it trains are those of the run without it."""
    plain, late = tmp_path / "plain", tmp_path / "late"
    train.run(_cfg(tiny_corpus, plain), **QUIET)
    killed_after(train.run, _cfg(tiny_corpus, late), 2)
    train.run(_cfg(tiny_corpus, late, average=2), resume=True, **QUIET)
    assert load_checkpoint(late / "checkpoint_avg.pt")["averaged_epochs"] == [3, 4]
    a, b = load_checkpoint(plain / "checkpoint_last.pt"), load_checkpoint(late / "checkpoint_last.pt")
    assert all(torch.equal(a["model_state_dict"][k], b["model_state_dict"][k]) for k in a["model_state_dict"])
