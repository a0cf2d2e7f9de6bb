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
