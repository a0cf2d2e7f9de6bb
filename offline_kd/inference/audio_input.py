"""What `transcribe` reads: audio files, directories of them, speech manifests, numpy samples, corpus splits.

Every input becomes an `Utterance`: an id, where its samples are (an `AudioSpec`, or samples in memory) and its
duration in seconds (the manifest's, else the file's header; 0 where unknown). Files are decoded, mixed down,
resampled and quantized by the same rule as `data import` (`data/audio.py`), so a transcribed file and an imported
one give the model the same features.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import soundfile as sf

from offline_kd.data.audio import AudioError, AudioSpec, load, resample, to_int16
from offline_kd.data.manifests import read_manifests
from offline_kd.errors import OfflineKDError

#: the file kinds a directory is searched for (what libsndfile decodes)
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au", ".w64", ".caf")

AudioLike = Union[str, Path, AudioSpec, np.ndarray]


@dataclass(frozen=True)
class Utterance:
    """One input of a transcription job."""
    uid: str
    spec: Optional[AudioSpec] = None          # a file (or a segment of one)
    samples: Optional[np.ndarray] = None      # or int16 samples at the model's rate, already in memory
    duration: float = 0.0                     # seconds (for batching, progress and the real-time factor)
    reference: Optional[str] = None           # a manifest's transcript, if it has one
    where: str = ""                           # the manifest row or file, for messages

    @property
    def name(self) -> str:
        return self.spec.path if self.spec is not None else self.uid


def file_duration(path: str) -> float:
    """Seconds of audio a file's header announces (0 for a file that cannot be opened: the decode says why)."""
    try:
        info = sf.info(path)
        return float(info.frames) / float(info.samplerate)
    except Exception:  # noqa: BLE001 - reported when the file is decoded
        return 0.0


def from_paths(paths: Sequence[str]) -> list[Utterance]:
    """Audio files and directories (searched recursively for AUDIO_SUFFIXES, in sorted order). Ids are file names
    without their suffix; where two names collide, the path relative to the common folder."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES)
            if not found:
                raise OfflineKDError(f"{p}: no audio files ({', '.join(AUDIO_SUFFIXES)}) in this directory")
            files += found
        elif p.exists():
            files.append(p)
        else:
            raise OfflineKDError(f"{p}: no such file or directory")
    stems = [f.stem for f in files]
    root = Path(_common_folder(files)) if files else Path(".")
    out = []
    for f, stem in zip(files, stems):
        uid = stem if stems.count(stem) == 1 else "-".join(f.resolve().relative_to(root).with_suffix("").parts)
        out.append(Utterance(uid, AudioSpec(str(f)), duration=file_duration(str(f)), where=str(f)))
    return out


def _common_folder(files: list[Path]) -> str:
    return os.path.commonpath([str(f.resolve().parent) for f in files])


def from_manifests(manifests: Sequence[str], fmt: str = "auto") -> list[Utterance]:
    """The rows of speech manifests (every kind `data import` reads); rows need no split."""
    rows = read_manifests(list(manifests), ["transcribe"] * len(manifests), fmt)
    return [Utterance(r.uid, r.audio, duration=r.audio.duration if r.audio.duration is not None
                      else file_duration(r.audio.path), reference=r.text, where=r.where) for r in rows]


def from_inputs(inputs: Sequence[AudioLike], sample_rate: Optional[int], model_rate: int) -> list[Utterance]:
    """Python inputs: paths, AudioSpecs and numpy arrays of samples (int16, or floats in [-1, 1]) at
    `sample_rate` (default: the model's)."""
    out = []
    for i, x in enumerate(inputs):
        if isinstance(x, (str, Path)):
            out.append(Utterance(Path(x).stem, AudioSpec(str(x)), duration=file_duration(str(x)), where=str(x)))
        elif isinstance(x, AudioSpec):
            out.append(Utterance(Path(x.path).stem, x, duration=x.duration or file_duration(x.path), where=x.path))
        elif isinstance(x, np.ndarray):
            samples = samples_at(x, model_rate if sample_rate is None else sample_rate, model_rate, f"inputs[{i}]")
            out.append(Utterance(f"input_{i}", samples=samples, duration=samples.size / model_rate,
                                 where=f"inputs[{i}]"))
        else:
            raise OfflineKDError(f"inputs[{i}]: a {type(x).__name__}; give a file path or a numpy array of samples")
    return out


def samples_at(x: np.ndarray, rate: int, target: int, where: str) -> np.ndarray:
    """int16 samples at `target` Hz from an array of samples at `rate` (int16, or floats in [-1, 1]; one channel,
    or (samples, channels) mixed down as `data import` does)."""
    x = np.asarray(x)
    if not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise OfflineKDError(f"{where}: sample rate {rate!r}: give a positive number of samples per second")
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=np.float32) if x.dtype != np.int16 else x.mean(axis=1).astype(np.float32) / 32768
    if x.ndim != 1:
        raise OfflineKDError(f"{where}: samples of shape {x.shape}; expected (samples,) or (samples, channels)")
    if x.size == 0:
        raise OfflineKDError(f"{where}: no samples")
    if x.dtype == np.int16 and rate == target:
        return x
    x = x.astype(np.float32) / 32768 if x.dtype == np.int16 else x.astype(np.float32)
    if not np.isfinite(x).all():
        raise OfflineKDError(f"{where}: NaN or infinite samples")
    try:
        return to_int16(resample(x, rate, target))
    except AudioError as exc:
        raise OfflineKDError(f"{where}: {exc}") from None


def read_samples(utt: Utterance, rate: int) -> np.ndarray:
    """The utterance's int16 samples at `rate`; AudioError says what is wrong with its file."""
    if utt.samples is not None:
        return utt.samples
    return load(utt.spec, rate)
