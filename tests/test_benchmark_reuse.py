"""benchmarks/efficacy.py reuses a finished run by its directory only when the run's saved config is what the study
asks now: a changed default (or a changed cache) must not pass for an old run."""

import sys
from pathlib import Path

import pytest

from offline_kd.config import ExperimentConfig, load_config, save_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import efficacy  # noqa: E402

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "demo" / "distill.yaml")


def _run(tmp_path, sets):
    out = tmp_path / "run-seed0"
    out.mkdir()
    save_config(load_config(CONFIG, ExperimentConfig, [f"train.output_dir={out}", "train.seed=0", *sets]),
                out / "config.yaml")
    (out / "done").write_text("")
    return out


def test_a_run_is_reused_only_with_the_config_it_was_trained_with(tmp_path):
    out = _run(tmp_path, ["distill.alpha=0.3", "train.progress=true"])
    assert efficacy.config_mismatch(CONFIG, out, 0, ["distill.alpha=0.3"]) == []     # (progress: display only)
    bad = efficacy.config_mismatch(CONFIG, out, 0, ["distill.alpha=0.5", "distill.untranscribed_alpha=0.9"])
    assert bad == ["distill.alpha: 0.3 there, 0.5 asked", "distill.untranscribed_alpha: 0.6 there, 0.9 asked"]
    assert efficacy.config_mismatch(CONFIG, out, 1, ["distill.alpha=0.3"]) == ["train.seed: 0 there, 1 asked"]
    # another cache: the same targets only if both are caches of the same identity (here: neither exists)
    assert efficacy.config_mismatch(CONFIG, out, 0, ["distill.cache=elsewhere.zarr"])[0].startswith("distill.cache")
    with pytest.raises(SystemExit, match="trained with another config"):
        efficacy.train("train-student", CONFIG, out, 0, ["distill.alpha=0.5"])
    assert efficacy.train("train-student", CONFIG, out, 0, []) == out / "checkpoint_best.pt"


def _curve(out, wers, epochs_run=None):
    """metrics.jsonl of a run whose dev WER (and CER, the same) per epoch is `wers`."""
    import json
    lines = [json.dumps({"event": "epoch", "epoch": e, "dev_wer": w, "dev_cer": w})
             for e, w in enumerate(wers[:epochs_run or len(wers)], 1)]
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_a_patience_that_keeps_the_best_checkpoint_reuses_the_run_and_one_that_cuts_it_does_not(tmp_path):
    import patience
    out = _run(tmp_path, ["train.patience=null"])          # configs/demo/distill.yaml: 30 epochs; no patience
    # best at epoch 20 after a wait of 3; flat to the end
    wers = [50 - e for e in range(10)] + [41, 41, 41] + [39 - e * 0.1 for e in range(7)] + [40] * 10
    _curve(out, wers)
    ev = patience.evaluations(out)
    assert patience.best_epoch(ev) == 20 and patience.longest_wait(ev) == 3
    assert patience.stop_epoch(ev, 4, 30) == 24 and patience.stop_epoch(ev, 3, 30) == 13
    assert patience.keeps_best(out, 4, 30) and not patience.keeps_best(out, 3, 30)
    assert not patience.keeps_best(out, 4, 30, whole=True) and patience.keeps_best(out, 11, 30, whole=True)
    assert efficacy.config_mismatch(CONFIG, out, 0, ["train.patience=4"]) == []
    assert efficacy.config_mismatch(CONFIG, out, 0, ["train.patience=3"]) == ["train.patience: None there, 3 asked"]
    # with checkpoint averaging the whole run must be the same
    assert efficacy.config_mismatch(CONFIG, out, 0, ["train.patience=4", "train.average=5"]) == [
        "train.patience: None there, 4 asked"]
    # a run its own patience stopped at epoch 24: a larger patience would have trained on, so it is not reused
    _curve(out, wers, epochs_run=24)
    assert patience.keeps_best(out, 4, 30) and not patience.keeps_best(out, 6, 30)
    # ties: the trainer keeps the last tied epoch's checkpoint but counts only strict improvements, so a patience
    # that stops within the ties changes the checkpoint
    _curve(out, [50 - e for e in range(10)] + [41] * 5 + [45] * 15)
    ev = patience.evaluations(out)
    assert patience.best_epoch(ev) == 15 and patience.longest_wait(ev) == 4
    assert not patience.keeps_best(out, 3, 30) and patience.keeps_best(out, 5, 30)
