"""LM weight tuning (`offline-kd tune-lm`): grid search of the LM weight alpha and word bonus beta on dev, then test with the best.

The acoustic model runs once per split; every (alpha, beta) pair only re-runs the beam search, reusing the loaded
LM. Output: every pair's dev WER, the best pair, and (with a test split) the test WER/CER of beam + best pair next
to greedy.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from offline_kd.data.corpus import Corpus
from offline_kd.decoding.metrics import error_rates
from offline_kd.errors import OfflineKDError, arg
from offline_kd.data.splits import open_split
from offline_kd.models.checkpoint import model_from_checkpoint
from offline_kd.runtime.loaders import evaluate_greedy, resolve_device
from offline_kd.decoding.beam import BeamSearchDecoder


def _decoder(vocab, lm, beam_width, num_processes):
    if not Path(lm).is_file():
        raise OfflineKDError(f"{arg('lm')}: language model file not found: {lm}")
    try:
        return BeamSearchDecoder(list(vocab.tokens), vocab.tokenizer, vocab.word_separator, lm_path=lm,
                                 beam_width=beam_width, num_processes=num_processes)
    except ValueError as exc:
        raise OfflineKDError(str(exc)) from None


def run(checkpoint: str, lm: str, alphas: list[float], betas: list[float], *, dev_split: str = "dev",
        test_split: str | None = "test", corpus_dir: str | None = None, beam_width: int = 32,
        num_processes: int = 1, device: str = "auto", out: str | None = None, log=print) -> dict:
    dev = resolve_device(device)
    model, vocab, ckpt = model_from_checkpoint(checkpoint, dev)
    corpus = Corpus(corpus_dir or ckpt.get("config", {}).get("data", {}).get("corpus", ""))
    decoder = _decoder(vocab, lm, beam_width, num_processes)
    reader, idx = open_split(corpus, dev_split, model, False, log)
    d = evaluate_greedy(model, reader, idx, vocab, dev, keep_log_probs=True)
    grid = []
    for a, b in itertools.product(alphas, betas):
        decoder.set_weights(a, b)
        r = error_rates(d["references"], decoder.decode(d["log_probs"]))
        grid.append({"alpha": a, "beta": b, "wer": r["wer"], "cer": r["cer"]})
        log(f"alpha {a:g} beta {b:g}: dev WER {r['wer']:.2f}%")
    best = min(grid, key=lambda g: (g["wer"], g["cer"]))
    result = {"checkpoint": checkpoint, "lm": lm, "dev_split": dev_split, "dev_greedy_wer": d["wer"],
              "grid": grid, "best": best}
    if test_split:
        reader, idx = open_split(corpus, test_split, model, False, log)
        t = evaluate_greedy(model, reader, idx, vocab, dev, keep_log_probs=True)
        decoder.set_weights(best["alpha"], best["beta"])
        r = error_rates(t["references"], decoder.decode(t["log_probs"]))
        result["test"] = {"split": test_split, "greedy_wer": t["wer"], "greedy_cer": t["cer"],
                          "beam_wer": r["wer"], "beam_cer": r["cer"], "alpha": best["alpha"], "beta": best["beta"]}
    if out:
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return result
