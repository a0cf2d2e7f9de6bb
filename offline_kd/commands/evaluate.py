"""`offline-kd evaluate`: greedy (and beam + KenLM) WER/CER of a checkpoint on a split (offline_kd.training.evaluation does the work)."""

from __future__ import annotations

from offline_kd.training import evaluation


def run(*args, **kwargs) -> dict:
    """-> {wer, cer, num_utterances, ...} (the signature of offline_kd.training.evaluation.run)."""
    return evaluation.run(*args, **kwargs)
