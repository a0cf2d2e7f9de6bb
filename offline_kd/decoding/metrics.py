"""WER on words and CER on characters, pooled over the corpus (jiwer)."""

from __future__ import annotations

import jiwer


def error_rates(references: list[str], hypotheses: list[str]) -> dict:
    """Corpus-level (pooled) WER and CER in percent. Empty references are skipped for WER (undefined)."""
    pairs = [(r, h) for r, h in zip(references, hypotheses) if r.strip()]
    if not pairs:
        return {"wer": float("nan"), "cer": float("nan")}
    refs = [r for r, _ in pairs]
    hyps = [h for _, h in pairs]
    words = jiwer.process_words(refs, hyps)
    chars = jiwer.process_characters(refs, hyps)
    return {"wer": 100.0 * words.wer, "cer": 100.0 * chars.cer,
            "word_errors": words.substitutions + words.deletions + words.insertions,
            "words": sum(len(r.split()) for r in refs)}
