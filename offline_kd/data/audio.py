"""Audio in: decode one manifest row's samples (soundfile), mix down to mono, resample (soxr), quantize to int16.

The rule for every audio file, whatever the manifest kind:
  - soundfile decodes it (WAV, FLAC, OGG/Vorbis, ... whatever libsndfile reads) as float32 in [-1, 1);
  - `offset` and `duration` (seconds) select a segment; a duration that runs up to `DURATION_TOLERANCE` past the
    end of the file is cut to the file (manifests round durations), further is an error;
  - several channels: the manifest's `channel` when it names one (lhotse cuts do), else the mean of all channels;
  - a sample rate other than the front end's is resampled with soxr (quality "HQ"), unless resampling is off;
  - the result is quantized to int16 (round half to even, clipped): that is the utterance's audio, the one
    `--keep-audio` stores and the one the filterbank reads, so features and kept audio always agree.

Every problem is an `AudioError` whose message names what is wrong; the importer adds the row and the file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Optional

import numpy as np
import soundfile as sf
import soxr

#: seconds a manifest's offset + duration may run past the end of its file before it is an error
DURATION_TOLERANCE = 0.025


class AudioError(Exception):
    """A row's audio cannot be used (the message says why; the importer names the row and the file)."""


@dataclass(frozen=True)
class AudioSpec:
    """Where one utterance's samples are: a file, and optionally a segment of it and a channel."""
    path: str
    offset: float = 0.0
    duration: Optional[float] = None
    channel: Optional[int] = None


def load(spec: AudioSpec, target_rate: int, allow_resample: bool = True) -> np.ndarray:
    """The utterance's int16 samples at `target_rate` (the module's rule). A 16-bit file at the target rate with one
    channel to take is read as int16 directly: the same samples the float path gives, without the round trip."""
    if not os.path.isfile(spec.path):
        raise AudioError("audio file not found")
    try:
        f = sf.SoundFile(spec.path)
    except Exception as exc:  # noqa: BLE001  (libsndfile's own message says what is wrong with the file)
        raise AudioError(f"not a readable audio file ({_one_line(exc)})") from None
    with f:
        rate, total, channels = int(f.samplerate), int(f.frames), int(f.channels)
        short = _shorter_than_its_header(f)
        if short:
            raise AudioError(short)
        start, count = _segment(spec, rate, total)
        direct = f.subtype == "PCM_16" and rate == target_rate and (channels == 1 or spec.channel is not None)
        try:
            if start:
                f.seek(start)
            x = f.read(count, dtype="int16" if direct else "float32", always_2d=True)
        except Exception as exc:  # noqa: BLE001
            raise AudioError(f"cannot decode the audio ({_one_line(exc)}): truncated or damaged?") from None
    if x.shape[0] < count:
        raise AudioError(f"the file ends after {(start + x.shape[0]) / rate:.3f} s although its header says "
                         f"{total / rate:.3f} s: truncated?")
    if spec.channel is not None:
        if not 0 <= spec.channel < channels:
            raise AudioError(f"channel {spec.channel} asked for, the file has {channels}")
        x = x[:, spec.channel]
    elif channels == 1:
        x = x[:, 0]
    else:
        x = x.mean(axis=1, dtype=np.float32)
    if direct:
        return np.ascontiguousarray(x)
    if not np.isfinite(x).all():
        raise AudioError(f"{int((~np.isfinite(x)).sum())} samples are NaN or infinite")
    return to_int16(resample(np.ascontiguousarray(x, dtype=np.float32), rate, target_rate, allow_resample))


_DATA_SIZE = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.M)
_PLACEHOLDERS = {0, 0x7FFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF - 1}     # what streaming writers put before the size is known


def _shorter_than_its_header(f) -> str:
    """A WAV-like file whose data chunk is shorter than its header says: libsndfile reads what is there without a
    word, so the truncation is found in its log (`extra_info`). Size placeholders of streamed files are not errors."""
    m = _DATA_SIZE.search(f.extra_info or "")
    if m and int(m.group(1)) > int(m.group(2)) and int(m.group(1)) not in _PLACEHOLDERS:
        return (f"the file holds {int(m.group(2))} bytes of audio data, its header says {int(m.group(1))}: "
                f"truncated?")
    return ""


def _segment(spec: AudioSpec, rate: int, total: int) -> tuple[int, int]:
    """(first sample, sample count) of the segment `spec` names in a file of `total` samples."""
    if spec.offset < 0 or (spec.duration is not None and spec.duration < 0):
        raise AudioError(f"negative offset or duration ({spec.offset}, {spec.duration})")
    start = int(round(spec.offset * rate))
    if spec.duration is None:
        count = total - start
    else:
        count = int(round(spec.duration * rate))
        past = (start + count - total) / rate
        if past > DURATION_TOLERANCE:
            raise AudioError(f"offset + duration ({spec.offset + spec.duration:.3f} s) runs past the end of the file "
                             f"({total / rate:.3f} s)")
        count = min(count, total - start)
    if count <= 0:
        raise AudioError(f"no samples (offset {spec.offset:g} s, file {total / rate:.3f} s)")
    return start, count


def resample(x: np.ndarray, rate: int, target: int, allowed: bool = True) -> np.ndarray:
    if rate == target:
        return x
    if not allowed:
        raise AudioError(f"sample rate {rate} Hz, the front end reads {target} Hz and resampling is off")
    return np.asarray(soxr.resample(x, rate, target, quality="HQ"), dtype=np.float32)


def to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 32768.0), -32768, 32767).astype(np.int16)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
