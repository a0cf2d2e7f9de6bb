"""Shared tiny fixtures, generated inside the test session (no downloaded data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# 2 threads (the CI machine's cores); OFFLINE_KD_TEST_THREADS=1 for runners that fork after tests ran (mutmut):
# a forked child inherits a busy OpenMP pool without its threads and hangs
torch.set_num_threads(int(os.environ.get("OFFLINE_KD_TEST_THREADS", max(1, min(2, os.cpu_count() or 1)))))

from helpers import QUIET, dump_cfg, experiment_dict, tiny_spec  # noqa: E402
from offline_kd.commands import dump_teacher  # noqa: E402
from offline_kd.data.synth import write_synth_corpus  # noqa: E402


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "tiny"
    write_synth_corpus(out, tiny_spec(num_untranscribed=48), log=lambda *_: None)
    return out


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


@pytest.fixture(scope="session")
def f32_cache(tiny_teacher, tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "f32.zarr"
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, out, splits=["train"]), **QUIET)
    return out
