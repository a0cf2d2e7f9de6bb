"""LM weight tuning (`offline-kd tune-lm`): grid search of the LM weight alpha and word bonus beta on dev, then test with the best.

The acoustic model runs once per split; every (alpha, beta) pair only re-runs the beam search, reusing the loaded
LM. Output: every pair's dev WER, the best pair, and (with a test split) the test WER/CER of beam + best pair next
to greedy.

With `cache` instead of a checkpoint the log-probs are a teacher cache's (`run_on_cache`): no model runs, so any
teacher a dump took (an ensemble, a Hugging Face model, an entry point) gets its alpha / beta for `dump.lm_targets`
from the dev split its cache holds, against the corpus's transcripts.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from offline_kd.cache.dev_figures import greedy_figures
from offline_kd.cache.reader import TeacherCache
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


def _grid(decoder, references: list, log_probs: list, alphas, betas, log) -> tuple[list, dict]:
    grid = []
    for a, b in itertools.product(alphas, betas):
        decoder.set_weights(a, b)
        r = error_rates(references, decoder.decode(log_probs))
        grid.append({"alpha": a, "beta": b, "wer": r["wer"], "cer": r["cer"]})
        log(f"alpha {a:g} beta {b:g}: dev WER {r['wer']:.2f}%")
    return grid, min(grid, key=lambda g: (g["wer"], g["cer"]))


def run_on_cache(cache: str, lm: str, alphas: list[float], betas: list[float], *, dev_split: str = "dev",
                 corpus_dir: str | None = None, beam_width: int = 32, num_processes: int = 1,
                 storage_options: dict | None = None, out: str | None = None, log=print) -> dict:
    """The grid on the cached log-probs of `dev_split` (decoded as a student reads them), scored against the
    transcripts of the corpus the cache was dumped from (or `corpus_dir`). -> {cache, lm, dev_split, dev_greedy_wer,
    grid, best}."""
    tc = TeacherCache(cache, storage_options=storage_options)
    if dev_split not in tc.splits:
        raise OfflineKDError(f"{arg('dev-split')}: {cache} holds no split {dev_split!r} (it holds "
                             f"{', '.join(tc.splits)})")
    corpus = Corpus(corpus_dir or tc.meta.corpus)
    if corpus.vocab.sha256 != tc.meta.vocab_sha256:
        raise OfflineKDError(f"the vocabulary of {corpus.dir} differs from the one {cache} was dumped with")
    reader = corpus.split(dev_split)
    reader.require_transcripts("tuning the LM weights")
    text = dict(zip(reader.utterance_ids, reader.transcripts))
    split = tc.split(dev_split)
    missing = [u for u in split.utterance_ids if u not in text]
    if missing:
        raise OfflineKDError(f"{cache}: split {dev_split}, utterance {missing[0]} is not in {corpus.dir}'s "
                             f"{dev_split} split (give the corpus it was dumped from: --corpus)")
    refs = [text[u] for u in split.utterance_ids]
    lps = [split.read(split.position[u])["log_probs"] for u in split.utterance_ids]
    greedy = greedy_figures(split.group, corpus.vocab, text)
    decoder = _decoder(corpus.vocab, lm, beam_width, num_processes)
    grid, best = _grid(decoder, refs, lps, alphas, betas, log)
    result = {"cache": cache, "lm": lm, "dev_split": dev_split, "dev_greedy_wer": greedy["wer"], "grid": grid,
              "best": best}
    if out:
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def run(checkpoint: str, lm: str, alphas: list[float], betas: list[float], *, dev_split: str = "dev",
        test_split: str | None = "test", corpus_dir: str | None = None, beam_width: int = 32,
        num_processes: int = 1, device: str = "auto", out: str | None = None, log=print) -> dict:
    dev = resolve_device(device)
    model, vocab, ckpt = model_from_checkpoint(checkpoint, dev)
    corpus = Corpus(corpus_dir or ckpt.get("config", {}).get("data", {}).get("corpus", ""))
    decoder = _decoder(vocab, lm, beam_width, num_processes)
    reader, idx = open_split(corpus, dev_split, model, False, log)
    d = evaluate_greedy(model, reader, idx, vocab, dev, keep_log_probs=True)
    grid, best = _grid(decoder, d["references"], d["log_probs"], alphas, betas, log)
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
