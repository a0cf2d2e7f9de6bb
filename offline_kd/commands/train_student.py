"""`offline-kd train-student`: distil a student from the teacher cache (offline_kd.distillation.student does the
work). The teacher checkpoint is never read, unless `--online-teacher` asks for live targets, for comparison."""

from __future__ import annotations

from offline_kd.config import ExperimentConfig, validate_experiment
from offline_kd.data.splits import quiet
from offline_kd.distillation.student import train_student
from offline_kd.runtime import distributed


def run(cfg: ExperimentConfig, resume: bool = False, online_teacher: str | None = None, log=print) -> dict:
    """-> {output_dir, best_dev_wer}."""
    validate_experiment(cfg, "train-student")
    env, device = distributed.setup(cfg.train.device)
    return distributed.run_then_shutdown(
        lambda: train_student(cfg, resume, online_teacher, env, device, log if env.is_main else quiet))
