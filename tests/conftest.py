"""Shared tiny fixtures, generated inside the test session (no downloaded data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

# 2 threads (the CI machine's cores); OFFLINE_KD_TEST_THREADS=1 for runners that fork after tests ran (mutmut):
# a forked child inherits a busy OpenMP pool without its threads and hangs
torch.set_num_threads(int(os.environ.get("OFFLINE_KD_TEST_THREADS", max(1, min(2, os.cpu_count() or 1)))))

from offline_kd.data.synth import SynthSpec, write_synth_corpus  # noqa: E402


def tiny_spec(**kw) -> SynthSpec:
    """An easy corpus: 16-dim features, 8 word units of 2 phones, clean, 2 speakers."""
    base = dict(seed=3, num_train=96, num_dev=16, num_test=16, feature_dim=16, num_units=8, num_phones=8,
                phones_per_unit=1, num_speakers=2, test_speakers=0, min_words=2, max_words=4,
                snr_db=(30.0, 40.0), speaker_distortion=0.05)
    base.update(kw)
    return SynthSpec(**base)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "tiny"
    write_synth_corpus(out, tiny_spec(), log=lambda *_: None)
    return out


def experiment_dict(corpus: Path, out: Path, hidden=24, layers=2, epochs=3, batch_size=8, **train) -> dict:
    return {
        "data": {"corpus": str(corpus), "batch_size": batch_size, "num_buckets": 2},
        "model": {"input_dim": 16, "hidden_dim": hidden, "num_layers": layers, "num_classes": 9, "dropout": 0.0},
        "train": {"epochs": epochs, "lr": 0.01, "output_dir": str(out), "progress": False, "log_every": 1,
                  "seed": 0, **train},
    }


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="session")
def tiny_teacher(tiny_corpus, tmp_path_factory) -> Path:
    """A 3-layer teacher trained for ~15 s on the tiny corpus (shared by cache and distillation tests)."""
    from offline_kd.config import ExperimentConfig, build_dataclass
    from offline_kd.commands import train
    out = tmp_path_factory.mktemp("teacher")
    cfg = build_dataclass(ExperimentConfig, experiment_dict(tiny_corpus, out, hidden=32, layers=3, epochs=15,
                                                             batch_size=4))
    train.run(cfg, log=lambda *_: None)
    return out / "checkpoint_last.pt"


def find_tool(name: str) -> str | None:
    """A command on PATH or beside this interpreter (scripts/setup.sh installs lmplz into .venv/bin, which is not
    on PATH when the tests run as `.venv/bin/python -m pytest` without activating the environment)."""
    import shutil
    import sys
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
