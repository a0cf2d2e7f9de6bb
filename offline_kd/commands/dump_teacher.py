"""`offline-kd dump-teacher`: run the teacher once over the corpus into a Zarr v3 cache (offline_kd.distillation.dump
does the work: plan, codec fitting, the shard loop, the LM N-best, the seal)."""

from __future__ import annotations

from offline_kd.config import DumpConfig
from offline_kd.distillation import dump


def run(cfg: DumpConfig, overwrite: bool = False, log=print) -> dict:
    """-> {cache, resumed, frames_written, utterances_written, seconds, fit_seconds[, world_size]}."""
    return dump.run(cfg, overwrite=overwrite, log=log)
