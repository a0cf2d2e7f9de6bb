"""`offline-kd tune-lm`: grid search of the LM weights on dev, then test with the best (offline_kd.training.lm_tuning does the work)."""

from __future__ import annotations

from offline_kd.training import lm_tuning


def run(*args, **kwargs) -> dict:
    """-> {dev: [...], best: {...}, test: {...}} (the signature of offline_kd.training.lm_tuning.run)."""
    return lm_tuning.run(*args, **kwargs)


def run_on_cache(*args, **kwargs) -> dict:
    """A teacher cache's dev log-probs instead of a model (offline_kd.training.lm_tuning.run_on_cache)."""
    return lm_tuning.run_on_cache(*args, **kwargs)
