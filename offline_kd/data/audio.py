"""Log-mel filterbank features from a waveform (numpy only; no torchaudio needed).

`log_mel(signal, sample_rate)` gives (frames, n_mels) float32: Hann-windowed frames of `win_ms` every `hop_ms`,
power spectrum, HTK mel filterbank between `fmin` and `fmax`, natural log with a floor. `read_wav` reads 16-bit
PCM WAV files (what espeak-ng and most tools write) into float32 in [-1, 1].
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from offline_kd.errors import OfflineKDError


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Mono 16-bit PCM WAV -> (float32 samples in [-1, 1], sample rate). Multi-channel files are averaged."""
    try:
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2:
                raise OfflineKDError(f"{path}: only 16-bit PCM WAV is supported (sample width {w.getsampwidth()})")
            rate, channels = w.getframerate(), w.getnchannels()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise OfflineKDError(f"{path}: not a readable WAV file ({exc})") from None
    x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    if channels > 1:
        x = x.reshape(-1, channels).mean(axis=1)
    return x, rate


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, fmin: float = 20.0,
                   fmax: float | None = None) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters, equally spaced on the HTK mel scale."""
    fmax = sample_rate / 2 if fmax is None else fmax
    if not 0 <= fmin < fmax <= sample_rate / 2:
        raise OfflineKDError(f"mel range must satisfy 0 <= fmin < fmax <= {sample_rate / 2:g} Hz, "
                             f"got {fmin:g}..{fmax:g}")
    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (bins[None, :] - lo) / (mid - lo)
    down = (hi - bins[None, :]) / (hi - mid)
    return np.maximum(0.0, np.minimum(up, down)).astype(np.float32)


def log_mel(signal: np.ndarray, sample_rate: int, n_mels: int = 80, hop_ms: float = 10.0, win_ms: float = 25.0,
            fmin: float = 20.0, fmax: float | None = 8000.0, floor: float = 1e-10) -> np.ndarray:
    """Log-mel filterbank energies, (frames, n_mels) float32; frames = 1 + (len - win) // hop (at least 1)."""
    x = np.asarray(signal, dtype=np.float32)
    if x.ndim != 1 or x.size == 0:
        raise OfflineKDError(f"log_mel expects a non-empty 1-D signal, got shape {x.shape}")
    win = int(round(sample_rate * win_ms / 1000))
    hop = int(round(sample_rate * hop_ms / 1000))
    n_fft = 1 << (win - 1).bit_length()
    if x.size < win:
        x = np.pad(x, (0, win - x.size))
    x = np.append(x[0], x[1:] - 0.97 * x[:-1])           # pre-emphasis
    n_frames = 1 + (x.size - win) // hop
    idx = np.arange(win)[None, :] + hop * np.arange(n_frames)[:, None]
    frames = x[idx] * np.hanning(win).astype(np.float32)[None, :]
    power = np.abs(np.fft.rfft(frames, n=n_fft, axis=1)) ** 2
    fmax = min(fmax or sample_rate / 2, sample_rate / 2)
    fb = mel_filterbank(n_mels, n_fft, sample_rate, fmin, fmax)
    return np.log(np.maximum(power @ fb.T, floor)).astype(np.float32)
