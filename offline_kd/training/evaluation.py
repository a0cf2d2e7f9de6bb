"""Evaluation (`offline-kd evaluate`): greedy (and beam + KenLM) WER/CER of a checkpoint on a split."""

from __future__ import annotations

import time
from pathlib import Path

from offline_kd.data.corpus import Corpus
from offline_kd.data.frontend import frontend_differences
from offline_kd.errors import OfflineKDError, arg
from offline_kd.models.interface import count_parameters, model_size_mb
from offline_kd.data.splits import open_split
from offline_kd.models.checkpoint import model_from_checkpoint
from offline_kd.runtime.loaders import evaluate_greedy, resolve_device
from offline_kd.decoding.metrics import error_rates
from offline_kd.decoding.beam import BeamSearchDecoder


def check_frontend(trained: dict | None, corpus: Corpus, checkpoint) -> None:
    """Refuse a corpus whose audio front end computes other features than the one the model was trained on (a
    checkpoint or a corpus of precomputed features has none to compare)."""
    here = corpus.meta.get("frontend")
    if trained is None or here is None:
        return
    diffs = frontend_differences(trained, here)
    if diffs:
        raise OfflineKDError(f"{corpus.dir}: its front end differs from the one {checkpoint} was trained on "
                             f"({'; '.join(diffs[:4])}, the checkpoint's first): its WER would measure the mismatch; "
                             f"import the audio again with `data import --like TRAINING_CORPUS` (the training "
                             f"corpus's fbank settings and CMVN statistics)")


def run(checkpoint: str, split: str, *, corpus_dir: str | None = None, device: str = "auto", batch_size: int = 32,
        skip_invalid: bool = False, decoder: str = "greedy", lm: str | None = None, alpha: float = 0.5,
        beta: float = 1.0, beam_width: int = 32, compare_greedy: bool = False, num_processes: int = 1,
        log=print) -> dict:
    if lm is not None and decoder != "beam":
        raise OfflineKDError(f"{arg('lm')} is used by beam search only: add {arg('decoder')} beam")
    dev = resolve_device(device)
    model, vocab, ckpt = model_from_checkpoint(checkpoint, dev)
    corpus_dir = corpus_dir or ckpt.get("config", {}).get("data", {}).get("corpus")
    if not corpus_dir:
        raise OfflineKDError("--corpus is required: the checkpoint does not name its corpus")
    corpus = Corpus(corpus_dir)
    if corpus.vocab.tokens != vocab.tokens:
        raise OfflineKDError(f"the vocabulary of {corpus.dir} differs from the checkpoint's ({checkpoint}): "
                             f"import the audio again with `data import --like TRAINING_CORPUS` (or "
                             f"`--vocab-from-teacher {checkpoint}`)")
    check_frontend(ckpt.get("frontend"), corpus, checkpoint)
    reader, idx = open_split(corpus, split, model, skip_invalid, log)
    want_beam = decoder == "beam"
    greedy = evaluate_greedy(model, reader, idx, vocab, dev, batch_size, keep_log_probs=want_beam)
    result = {
        "checkpoint": str(checkpoint), "split": split, "corpus": str(corpus.dir), "decoder": decoder,
        "num_utterances": greedy["num_utterances"], "num_parameters": count_parameters(model),
        "model_size_mb": round(model_size_mb(model), 3),
        "frames_per_second": round(greedy["frames_per_second"], 1),
        "frames": greedy["frames"],
    }
    if want_beam:
        if lm is not None and not Path(lm).is_file():
            raise OfflineKDError(f"{arg('lm')}: language model file not found: {lm}")
        try:
            beam_dec = BeamSearchDecoder(list(vocab.tokens), vocab.tokenizer, vocab.word_separator, lm_path=lm,
                                         alpha=alpha, beta=beta, beam_width=beam_width, num_processes=num_processes)
        except ValueError as exc:
            raise OfflineKDError(str(exc)) from None
        start = time.perf_counter()
        hyps = beam_dec.decode(greedy["log_probs"])
        beam_s = time.perf_counter() - start
        rates = error_rates(greedy["references"], hyps)
        result.update({"wer": rates["wer"], "cer": rates["cer"], "lm": lm, "alpha": alpha, "beta": beta,
                       "beam_width": beam_width, "beam_seconds": round(beam_s, 3)})
        if compare_greedy:
            result.update({"greedy_wer": greedy["wer"], "greedy_cer": greedy["cer"]})
        result["hypotheses"] = hyps
    else:
        result.update({"wer": greedy["wer"], "cer": greedy["cer"]})
        result["hypotheses"] = greedy["hypotheses"]
    result["references"] = greedy["references"]
    result["utterance_ids"] = greedy["utterance_ids"]
    return result
