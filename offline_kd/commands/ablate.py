"""`offline-kd ablate`: many distillation runs against one cache, resumable (offline_kd.distillation.ablation does
the work; its docstring describes the ablation config)."""

from __future__ import annotations

from offline_kd.distillation import ablation
from offline_kd.distillation.ablation import child_env, expand, run_one, write_tables  # noqa: F401  (public API)


def run(config_path: str, parallel: int | None = None, log=print) -> dict:
    """-> the ablation's results (also written to output_dir/results.json and results.csv)."""
    return ablation.run(config_path, parallel=parallel, log=log)
