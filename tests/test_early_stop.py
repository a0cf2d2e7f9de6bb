"""Early stopping (`train.patience`): a run stops after that many dev evaluations in a row without a new best dev
WER, records why, and a resumed run that had stopped does not train further."""

from __future__ import annotations

import json

import pytest

from helpers import QUIET, experiment_dict
from offline_kd.commands import train
from offline_kd.config import ExperimentConfig, build_dataclass
from offline_kd.errors import OfflineKDError
from offline_kd.training import trainer as trainer_module
from offline_kd.models.checkpoint import load_checkpoint


def scripted_wer(monkeypatch, wers):
    """Dev evaluation returns the next WER of `wers` (the trainer's decisions are what is tested)."""
    it = iter(wers)

    def fake(*args, **kwargs):
        return {"wer": next(it), "cer": 0.0, "num_utterances": 1}
    monkeypatch.setattr(trainer_module, "evaluate_greedy", fake)


def epochs_of(run) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_patience_counts_evaluations_since_the_last_best_and_stops(tiny_corpus, tmp_path, monkeypatch):
    scripted_wer(monkeypatch, [50, 40, 45, 35, 36, 37, 30, 30, 30])
    d = experiment_dict(tiny_corpus, tmp_path / "run", epochs=9, patience=2)
    train.run(build_dataclass(ExperimentConfig, d), **QUIET)
    rows = epochs_of(tmp_path / "run")
    assert [r["epoch"] for r in rows if r["event"] == "epoch"] == [1, 2, 3, 4, 5, 6]     # 35, then 36 and 37
    stop = [r for r in rows if r["event"] == "early_stop"]
    assert stop == [{"event": "early_stop", "epoch": 6, "best_wer": 35, "patience": 2}]
    assert load_checkpoint(tmp_path / "run" / "checkpoint_best.pt")["epoch"] == 4
    # resumed, the stopped run stays stopped (the scripted WERs would otherwise go on)
    scripted_wer(monkeypatch, [])
    train.run(build_dataclass(ExperimentConfig, d), resume=True, **QUIET)
    assert load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")["epoch"] == 6


def test_without_patience_every_epoch_runs(tiny_corpus, tmp_path, monkeypatch):
    scripted_wer(monkeypatch, [50, 60, 70, 80])
    train.run(build_dataclass(ExperimentConfig, experiment_dict(tiny_corpus, tmp_path / "run", epochs=4)), **QUIET)
    assert load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")["epoch"] == 4


@pytest.mark.parametrize("value", [0, -1, True, 1.5])
def test_a_bad_patience_is_a_one_line_error(tiny_corpus, tmp_path, value):
    with pytest.raises(OfflineKDError, match="train.patience"):
        build_dataclass(ExperimentConfig, experiment_dict(tiny_corpus, tmp_path / "run", patience=value))


def test_wer_ties_go_to_the_lower_cer_then_the_later_epoch(tiny_corpus, tmp_path, monkeypatch):
    """A small run at 100% WER: the best checkpoint is the epoch of the lowest CER, the later of equals (issue #45
    item 5: ties went to the earliest epoch); patience counts strict improvements only."""
    it = iter([(100.0, 90.0), (100.0, 80.0), (100.0, 80.0), (100.0, 85.0)])

    def fake(*args, **kwargs):
        wer, cer = next(it)
        return {"wer": wer, "cer": cer, "num_utterances": 1}
    monkeypatch.setattr(trainer_module, "evaluate_greedy", fake)
    train.run(build_dataclass(ExperimentConfig, experiment_dict(tiny_corpus, tmp_path / "run", epochs=4)), **QUIET)
    assert load_checkpoint(tmp_path / "run" / "checkpoint_best.pt")["epoch"] == 3
    assert [r.get("evals_since_best") for r in epochs_of(tmp_path / "run") if r["event"] == "epoch"] == [0, 0, 1, 2]


def test_a_warmup_longer_than_the_patience_window_is_warned_about(tiny_corpus, tmp_path, monkeypatch, capsys):
    scripted_wer(monkeypatch, [50, 40])
    d = experiment_dict(tiny_corpus, tmp_path / "run", epochs=2, patience=1, warmup_steps=500)
    train.run(build_dataclass(ExperimentConfig, d), **QUIET)
    err = capsys.readouterr().err
    assert "warning: train.warmup_steps (500) outlasts the early-stopping window (train.patience 1" in err, err
    assert "lower train.warmup_steps (e.g. " in err
    scripted_wer(monkeypatch, [50, 40])
    d = experiment_dict(tiny_corpus, tmp_path / "run2", epochs=2, patience=1, warmup_steps=1)
    train.run(build_dataclass(ExperimentConfig, d), **QUIET)
    assert "outlasts" not in capsys.readouterr().err
