"""A trained checkpoint as a speech recogniser: `load_model("student.pt").transcribe(["a.wav", samples])`.

`SpeechModel` holds the model, its vocabulary and its front end (the fbank options and normalisation it was trained
on, which every checkpoint written by `train` and `train-student` carries). Checkpoints written before they carried
it borrow the front end of a corpus: the one given, else the one the checkpoint was trained on if it is on this
machine. A model trained on precomputed features (the demo's) has no front end: it transcribes features (a corpus
split), not audio, and says so.

Inputs are batched by length (longest first) so that padding stays small; outputs come back in input order and do
not depend on the batching (the models mask padding).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import torch

from offline_kd.data.audio import AudioError
from offline_kd.data.corpus import Corpus
from offline_kd.data.frontend import FrontEnd, frontend_differences
from offline_kd.data.targets import collapse_best_path
from offline_kd.data.vocab import Vocabulary
from offline_kd.decoding.beam import BeamSearchDecoder
from offline_kd.errors import OfflineKDError, arg
from offline_kd.inference.audio_input import AudioLike, Utterance, from_inputs, read_samples
from offline_kd.inference.timing import Word, greedy_words
from offline_kd.models.interface import CTCModel, reads_waveform
from offline_kd.models.checkpoint import model_from_checkpoint
from offline_kd.runtime.loaders import resolve_device

#: default batch: at most this many seconds of audio (or utterances), padded to the longest
BATCH_SECONDS = 240.0
BATCH_UTTERANCES = 32


@dataclass(frozen=True)
class Transcript:
    """One utterance's result: its id, text, words with times (None unless asked), audio seconds."""
    uid: str
    text: str
    words: Optional[tuple[Word, ...]] = None
    duration: float = 0.0

    def to_dict(self) -> dict:
        out = {"id": self.uid, "text": self.text}
        if self.words is not None:
            out["words"] = [w.to_dict() for w in self.words]
        return out


@dataclass
class Failed:
    """An input that could not be transcribed, and why (`--skip-invalid`)."""
    uid: str
    where: str
    reason: str


@dataclass
class BatchResult:
    """What one batch of `SpeechModel.run` yields: per utterance (in the batch's order) its log-probs (T', V) or
    the reason it failed."""
    utterances: list[Utterance]
    log_probs: list[Optional[np.ndarray]]
    failed: list[Failed] = field(default_factory=list)


class SpeechModel:
    """A CTC checkpoint ready to transcribe: model, vocabulary, front end, device."""

    def __init__(self, model: CTCModel, vocab: Vocabulary, frontend: Optional[FrontEnd], device: torch.device,
                 checkpoint: str = "", frontend_source: str = "", tuned_lm: Optional[dict] = None,
                 checkpoint_config: Optional[dict] = None):
        self.model, self.vocab, self.frontend, self.device = model, vocab, frontend, device
        self.checkpoint_config = checkpoint_config      # the resolved config it was trained with, if saved
        self.checkpoint, self.frontend_source = checkpoint, frontend_source
        self.tuned_lm = tuned_lm
        if frontend is not None and frontend.feature_dim != model.input_dim:
            raise OfflineKDError(f"{checkpoint}: the front end ({frontend_source}) gives {frontend.feature_dim}-dim "
                                 f"features, the model reads {model.input_dim}")

    # ------------------------------------------------------------------------------------------ properties
    @property
    def sample_rate(self) -> int:
        """The rate the front end reads (inputs at other rates are resampled)."""
        return self.frontend.sample_rate if self.frontend is not None else 16000

    @property
    def frame_seconds(self) -> float:
        """Duration of one output frame: the front end's frame shift x the model's subsampling (10 ms if unknown)."""
        shift = self.frontend.options.frame_shift_ms if self.frontend is not None else 10.0
        return shift / 1000.0 * self.model.subsampling

    def require_frontend(self) -> FrontEnd:
        if self.frontend is None:
            raise OfflineKDError(
                f"{self.checkpoint}: the model was trained on precomputed features and carries no audio front end; "
                f"give a corpus imported from audio with the same front end (--corpus DIR, or load_model(..., "
                f"corpus=DIR)), or transcribe features (a corpus split: --corpus DIR --split NAME)")
        return self.frontend

    # -------------------------------------------------------------------------------------------- features
    def features(self, utt: Utterance) -> np.ndarray:
        """(frames, feature_dim) float32 of one utterance, exactly as `data import` computes them; for a model that
        reads waveforms (`model.type: hf`) its samples (N,) in [-1, 1) at the front end's rate, as `data import
        --keep-audio` keeps them."""
        return utterance_features(self.require_frontend(), utt, reads_waveform(self.model))

    @torch.no_grad()
    def forward_features(self, features: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per utterance its log-probs (T', V) float32 for (T, D) feature arrays given as one batch."""
        lengths = torch.tensor([f.shape[0] for f in features], dtype=torch.long)
        x = torch.zeros(len(features), int(lengths.max()), *features[0].shape[1:])
        for i, f in enumerate(features):
            x[i, :f.shape[0]] = torch.from_numpy(np.ascontiguousarray(f, dtype=np.float32))
        self.model.eval()
        log_probs, out_len = self.model(x.to(self.device), lengths.to(self.device))
        lp = log_probs.float().transpose(0, 1).cpu().numpy()
        return [lp[b, :n] for b, n in enumerate(out_len.tolist())]

    def run(self, utterances: Sequence[Utterance], *, skip_invalid: bool = False,
            batch_seconds: float = BATCH_SECONDS, batch_size: int = BATCH_UTTERANCES,
            feature_batches: Optional[Iterable[list]] = None) -> Iterator[BatchResult]:
        """Log-probs of every utterance, a batch at a time (longest first). A bad input raises a one-line
        OfflineKDError naming it, or with `skip_invalid` is reported in the batch's `failed`. `feature_batches`
        (from `batches_of` + a worker pool) supplies the features or the AudioError of each utterance."""
        plan = batches_of(utterances, batch_seconds, batch_size)
        if feature_batches is None:
            feature_batches = (self.batch_features(utterances, b) for b in plan)
        for idx, feats in zip(plan, feature_batches):
            utts = [utterances[i] for i in idx]
            failed = [Failed(u.uid, u.where, str(f)) for u, f in zip(utts, feats) if isinstance(f, Exception)]
            if failed and not skip_invalid:
                f = failed[0]
                raise OfflineKDError(f"{f.where}: utterance {f.uid}: {f.reason} (--skip-invalid transcribes the "
                                     f"rest and lists the bad ones)")
            good = [f for f in feats if not isinstance(f, Exception)]
            outs = iter(self.forward_features(good)) if good else iter(())
            yield BatchResult(utts, [None if isinstance(f, Exception) else next(outs) for f in feats], failed)

    def batch_features(self, utterances: Sequence[Utterance], idx: list[int]) -> list:
        """Features of `utterances[i]` for i in idx, or the AudioError that stopped each."""
        out = []
        for i in idx:
            try:
                out.append(self.features(utterances[i]))
            except AudioError as exc:
                out.append(exc)
        return out

    # ---------------------------------------------------------------------------------------------- public
    def log_probs(self, inputs: Sequence[AudioLike], sample_rate: Optional[int] = None) -> list[np.ndarray]:
        """CTC log-probabilities (T', V) of each input (file paths, or numpy samples at `sample_rate`, default the
        model's), in input order, for people who decode themselves. Blank is class 0; frame t covers
        [t, t + 1) x `frame_seconds`."""
        return self._log_probs(from_inputs(inputs, sample_rate, self.sample_rate))

    def _log_probs(self, utts: Sequence[Utterance]) -> list[np.ndarray]:
        out: list[Optional[np.ndarray]] = [None] * len(utts)
        position = {id(u): i for i, u in enumerate(utts)}
        for res in self.run(utts):
            for u, lp in zip(res.utterances, res.log_probs):
                out[position[id(u)]] = lp
        return out  # type: ignore[return-value]

    def transcribe(self, inputs: Sequence[AudioLike], *, sample_rate: Optional[int] = None, timestamps: bool = False,
                   decoder: Optional[BeamSearchDecoder] = None):
        """Texts of the inputs (file paths, or numpy samples at `sample_rate`), in input order; with `timestamps`,
        `Transcript`s whose `words` carry start/end seconds. Greedy unless a `BeamSearchDecoder` is given
        (`beam_decoder`)."""
        utts = from_inputs(inputs, sample_rate, self.sample_rate)
        lps = self._log_probs(utts)
        results = self.decode(lps, [u.uid for u in utts], timestamps, decoder)
        return results if timestamps else [r.text for r in results]

    def decode(self, log_probs: Sequence[np.ndarray], uids: Sequence[str], timestamps: bool = False,
               decoder: Optional[BeamSearchDecoder] = None) -> list[Transcript]:
        """Transcripts of log-probs (T', V): greedy, or beam search with `decoder`."""
        if decoder is not None:
            beams = decoder.decode_with_word_frames(list(log_probs))
            return [Transcript(u, text, tuple(Word(w, s * self.frame_seconds, e * self.frame_seconds)
                                              for w, s, e in frames) if timestamps else None,
                               lp.shape[0] * self.frame_seconds)
                    for u, lp, (text, frames) in zip(uids, log_probs, beams)]
        out = []
        for u, lp in zip(uids, log_probs):
            best = lp.argmax(-1)
            ids = collapse_best_path(best).tolist()
            words = tuple(greedy_words(best, self.vocab, self.frame_seconds)) if timestamps else None
            out.append(Transcript(u, self.vocab.decode(ids), words, lp.shape[0] * self.frame_seconds))
        return out

    def beam_decoder(self, lm: Optional[str] = None, alpha: Optional[float] = None, beta: Optional[float] = None,
                     beam_width: int = 32, num_processes: int = 1) -> BeamSearchDecoder:
        """A pyctcdecode beam search over this vocabulary; alpha/beta default to the run's tuned values
        (`tune_lm.json` beside the checkpoint, written by `offline-kd tune-lm --out`) where they exist, else
        0.5 / 1.0."""
        tuned = self.tuned_lm or {}
        a = alpha if alpha is not None else tuned.get("alpha", 0.5)
        b = beta if beta is not None else tuned.get("beta", 1.0)
        try:
            return BeamSearchDecoder(list(self.vocab.tokens), self.vocab.tokenizer, self.vocab.word_separator,
                                     lm_path=lm, alpha=a, beta=b, beam_width=beam_width, num_processes=num_processes)
        except ValueError as exc:
            raise OfflineKDError(f"{arg('lm')}: {exc}") from None


def utterance_features(fe: FrontEnd, utt: Utterance, waveform: bool = False) -> np.ndarray:
    """The front end's features of one utterance, or with `waveform` its samples (N,) float32 in [-1, 1) at the
    front end's rate (what a model that reads waveforms takes); AudioError for audio it cannot use (as `data
    import` refuses)."""
    samples = read_samples(utt, fe.sample_rate)
    if samples.size < fe.options.frame_length:
        raise AudioError(f"{samples.size} samples at {fe.sample_rate} Hz: shorter than one frame "
                         f"({fe.options.frame_length_ms:g} ms)")
    return samples.astype(np.float32) / 32768.0 if waveform else fe.features(samples)


def batches_of(utterances: Sequence[Utterance], batch_seconds: float = BATCH_SECONDS,
               batch_size: int = BATCH_UTTERANCES) -> list[list[int]]:
    """Indices of the utterances in batches of similar length, longest first (ties by input position)."""
    order = sorted(range(len(utterances)), key=lambda i: (-utterances[i].duration, i))
    batches: list[list[int]] = []
    for i in order:
        # a batch is padded to its first (longest) utterance: its cost is that length x its size
        if batches and len(batches[-1]) < batch_size and \
                utterances[batches[-1][0]].duration * (len(batches[-1]) + 1) <= batch_seconds:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def load_model(checkpoint: str | Path, *, device: str = "cpu", corpus: Optional[str | Path] = None,
               log=None) -> SpeechModel:
    """The checkpoint as a `SpeechModel`. Its front end is the one it carries, else the one of `corpus` (a corpus
    imported from audio), else that of the corpus it was trained on if that is on this machine."""
    dev = resolve_device(device)
    model, vocab, ckpt = model_from_checkpoint(checkpoint, dev)
    record, source = ckpt.get("frontend"), "the checkpoint"
    if corpus is not None:
        c = Corpus(corpus)
        if c.vocab.tokens != vocab.tokens:
            raise OfflineKDError(f"--corpus {c.dir}: its vocabulary differs from the checkpoint's ({checkpoint}); "
                                 f"import its audio with `data import --like TRAINING_CORPUS` (or --vocab-from-teacher "
                                 f"{checkpoint})")
        if record is None:
            record, source = c.meta.get("frontend"), f"corpus {c.dir}"
        elif c.meta.get("frontend") is not None and (diffs := frontend_differences(record, c.meta["frontend"])):
            raise OfflineKDError(f"--corpus {c.dir}: its front end differs from the one {checkpoint} was trained on "
                                 f"({'; '.join(diffs[:4])}, the checkpoint's first); import its audio with "
                                 f"`data import --like TRAINING_CORPUS`")
    if record is None and corpus is None:
        trained_on = (ckpt.get("config") or {}).get("data", {}).get("corpus")
        if trained_on and (Path(trained_on) / "corpus.json").is_file():
            record, source = Corpus(trained_on).meta.get("frontend"), f"corpus {trained_on} (it was trained on)"
            if record is not None and log is not None:
                log(f"front end: from {source}; the checkpoint predates checkpoints that carry it")
    frontend = FrontEnd(record, f"{checkpoint}: frontend" if source == "the checkpoint" else source) \
        if record is not None else None
    return SpeechModel(model, vocab, frontend, dev, str(checkpoint), source if record is not None else "",
                       _tuned_lm(Path(checkpoint)), ckpt.get("config"))


def _tuned_lm(checkpoint: Path) -> Optional[dict]:
    """alpha/beta of `tune_lm.json` beside the checkpoint (what `offline-kd tune-lm --out` writes), if any."""
    path = checkpoint.parent / "tune_lm.json"
    try:
        best = json.loads(path.read_text())["best"]
        return {"alpha": float(best["alpha"]), "beta": float(best["beta"]), "source": str(path)}
    except (OSError, ValueError, KeyError, TypeError):
        return None
