"""`offline-kd transcribe`: a checkpoint and audio (files, directories, manifests) or a corpus split -> text."""

from __future__ import annotations

from typing import Optional

from offline_kd.data.corpus import Corpus
from offline_kd.errors import OfflineKDError, arg
from offline_kd.inference.audio_input import from_manifests, from_paths
from offline_kd.inference.job import JobResult, corpus_utterances, run_job
from offline_kd.inference.model import load_model


def run(checkpoint: str, audio: list[str], *, manifests: list[str] = (), corpus: Optional[str] = None,
        split: Optional[str] = None, device: str = "cpu", decoder: str = "greedy", lm: Optional[str] = None,
        alpha: Optional[float] = None, beta: Optional[float] = None, beam_width: int = 32, jobs: int = 1,
        skip_invalid: bool = False, progress: bool = True, batch_seconds: float = 240.0, log=print) -> JobResult:
    if lm is not None and decoder != "beam":
        raise OfflineKDError(f"{arg('lm')} is used by beam search only: add {arg('decoder')} beam")
    if jobs < 1:
        raise OfflineKDError(f"--jobs must be >= 1, got {jobs}")
    if split is not None and corpus is None:
        raise OfflineKDError("--split names a split of --corpus: give --corpus too")
    if split is not None and (audio or manifests):
        raise OfflineKDError("give either audio (files, directories, --manifest) or --corpus/--split, not both")
    model = load_model(checkpoint, device=device, corpus=corpus if split is None else None, log=log)
    beam = None
    if decoder == "beam":
        beam = model.beam_decoder(lm, alpha, beta, beam_width, num_processes=1)
        tuned = model.tuned_lm if (alpha is None or beta is None) and model.tuned_lm else None
        log(f"beam search: width {beam_width}" + (f", LM {lm}" if lm else ", no LM") +
            (f", alpha/beta from {tuned['source']}" if tuned and lm else ""))
    reader = None
    if split is not None:
        c = Corpus(corpus)
        if c.vocab.tokens != model.vocab.tokens:
            raise OfflineKDError(f"--corpus {c.dir}: its vocabulary differs from the checkpoint's ({checkpoint})")
        if c.feature_dim != model.model.input_dim:
            raise OfflineKDError(f"--corpus {c.dir}: {c.feature_dim}-dim features, the model reads "
                                 f"{model.model.input_dim}")
        if model.frontend is not None and c.meta.get("frontend") not in (None, model.frontend.record):
            raise OfflineKDError(f"--corpus {c.dir}: its front end differs from the one {checkpoint} was trained on")
        reader = c.split(split)
        shift = (c.meta.get("frontend") or {}).get("frame_shift_ms", 10.0) / 1000.0
        utterances = corpus_utterances(reader, shift)
    else:
        utterances = (from_paths(audio) if audio else []) + (from_manifests(manifests) if manifests else [])
    return run_job(model, utterances, decoder=beam, jobs=jobs, skip_invalid=skip_invalid, progress=progress,
                   reader=reader, batch_seconds=batch_seconds)
