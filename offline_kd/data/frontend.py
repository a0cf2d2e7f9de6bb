"""The acoustic front end: Kaldi-compatible log-mel filterbanks from kaldi-native-fbank, and feature normalisation.

`Fbank(options).compute(samples_int16)` gives (frames, num_mel_bins) float32, exactly what kaldi-native-fbank's
`OnlineFbank` returns for the same samples (Kaldi's convention: samples in the int16 range, not [-1, 1]). Dither
is 0 by default so that features are reproducible (a resumed import writes the same bytes). The options are
recorded in `corpus.json` (`frontend`) and so in every cache dumped from the corpus.

Presets (`data import --fbank-preset`): `kaldi` (the default above: samples in the int16 range, `snip_edges`
true, the mel bank up to Nyquist) and `lhotse` (lhotse's and icefall's `Fbank` defaults, which sherpa-onnx's
zipformer-CTC kind computes too: samples in [-1, 1], `snip_edges` false, `high_freq` -400).

`FrontEnd.from_record(corpus.json's or a checkpoint's "frontend")` applies a recorded front end, normalisation
included, to new audio: what `offline-kd transcribe` does with a checkpoint's record.

Normalisation (`cmvn`):
  none       the filterbank as it comes;
  global     mean and standard deviation per bin over every frame of one split (the training split), stored in
             `corpus.json` and applied to every split;
  utterance  each utterance by its own mean and standard deviation per bin.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from importlib.metadata import version

import kaldi_native_fbank as knf
import numpy as np

from offline_kd.errors import OfflineKDError

CMVN_KINDS = ("none", "global", "utterance")
#: named front ends (`data import --fbank-preset`): the options each sets, beside FbankOptions' defaults
FBANK_PRESETS = {
    "kaldi": {},
    "lhotse": {"snip_edges": False, "high_freq": -400.0, "low_freq": 20.0, "normalize_samples": True},
}
BLOCK = 1 << 20                 # samples handed to kaldi-native-fbank at a time
_STD_FLOOR = 1e-5


@dataclass(frozen=True)
class FbankOptions:
    sample_rate: int = 16000
    num_mel_bins: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    dither: float = 0.0
    low_freq: float = 20.0
    high_freq: float = 0.0            # Kaldi: <= 0 means offset from the Nyquist frequency
    preemph_coeff: float = 0.97
    window_type: str = "povey"
    snip_edges: bool = True
    normalize_samples: bool = False   # True: the filterbank reads samples in [-1, 1] (lhotse), not the int16 range

    def check(self) -> None:
        if self.sample_rate <= 0 or self.num_mel_bins <= 0 or self.frame_shift_ms <= 0 \
                or self.frame_length_ms < self.frame_shift_ms:
            raise OfflineKDError(f"front end: need sample_rate, num_mel_bins, frame_shift_ms > 0 and frame_length_ms "
                                 f">= frame_shift_ms, got {self}")

    def to_dict(self) -> dict:
        d = asdict(self)
        if not self.normalize_samples:     # records written before the option existed read the same
            del d["normalize_samples"]
        return {"kind": "kaldi-fbank", "library": f"kaldi-native-fbank {_knf_version()}", **d}

    @classmethod
    def from_record(cls, record: dict, where: str = "frontend") -> "FbankOptions":
        """The options a `to_dict()` record holds (its `kind`, `library` and `cmvn` are not options)."""
        if not isinstance(record, dict) or record.get("kind") != "kaldi-fbank":
            kind = record.get("kind") if isinstance(record, dict) else type(record).__name__
            raise OfflineKDError(f"{where}: front end of kind {kind!r}; this offline-kd computes 'kaldi-fbank'")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(record) - names - {"kind", "library", "cmvn"})
        if unknown:
            raise OfflineKDError(f"{where}: unknown front-end option(s) {', '.join(unknown)} (written by a newer "
                                 f"offline-kd?)")
        try:
            options = cls(**{k: v for k, v in record.items() if k in names})
        except TypeError as exc:
            raise OfflineKDError(f"{where}: {exc}") from None
        options.check()
        return options

    @property
    def frame_length(self) -> int:
        """Samples in one analysis window (an utterance shorter than this has no frame)."""
        return int(self.sample_rate * self.frame_length_ms / 1000)

    def knf(self) -> knf.FbankOptions:
        o = knf.FbankOptions()
        f = o.frame_opts
        f.samp_freq = float(self.sample_rate)
        f.frame_length_ms = float(self.frame_length_ms)
        f.frame_shift_ms = float(self.frame_shift_ms)
        f.dither = float(self.dither)
        f.preemph_coeff = float(self.preemph_coeff)
        f.window_type = self.window_type
        f.snip_edges = bool(self.snip_edges)
        o.mel_opts.num_bins = int(self.num_mel_bins)
        o.mel_opts.low_freq = float(self.low_freq)
        o.mel_opts.high_freq = float(self.high_freq)
        return o


def _knf_version() -> str:

    try:
        return version("kaldi-native-fbank")
    except Exception:  # noqa: BLE001
        return "unknown"


class Fbank:
    def __init__(self, options: FbankOptions):
        self.options = options
        self._knf = options.knf()

    def compute(self, samples: np.ndarray) -> np.ndarray:
        """(frames, num_mel_bins) float32 from int16 samples (or floats in the int16 range) at the options' rate."""
        fb = knf.OnlineFbank(self._knf)
        # a list crosses into the extension faster than an array (pybind11 converts either to a vector); blocks
        # of BLOCK samples keep that list small for long recordings (the online extractor's frames are the same)
        x = np.asarray(samples, dtype=np.float32)
        if self.options.normalize_samples:
            x = x / np.float32(32768.0)
        for start in range(0, x.shape[0], BLOCK):
            fb.accept_waveform(float(self.options.sample_rate), x[start:start + BLOCK].tolist())
        fb.input_finished()
        out = np.empty((fb.num_frames_ready, self.options.num_mel_bins), dtype=np.float32)
        for i in range(out.shape[0]):
            out[i] = fb.get_frame(i)
        return out


def normalise_utterance(feats: np.ndarray) -> np.ndarray:
    return ((feats - feats.mean(0)) / np.maximum(feats.std(0), _STD_FLOOR)).astype(np.float32)


class GlobalStats:
    """Running sums for global mean/variance normalisation (float64; merged across chunks in a fixed order)."""

    def __init__(self, dim: int):
        self.n = 0
        self.sum = np.zeros(dim, dtype=np.float64)
        self.sumsq = np.zeros(dim, dtype=np.float64)

    def add(self, n: int, s: np.ndarray, ss: np.ndarray) -> None:
        self.n += int(n)
        self.sum += s
        self.sumsq += ss

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.sum / max(self.n, 1)
        var = np.maximum(self.sumsq / max(self.n, 1) - mean ** 2, 0.0)
        return mean.astype(np.float32), np.maximum(np.sqrt(var), _STD_FLOOR).astype(np.float32)


def apply_global(feats: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return ((feats - mean) / std).astype(np.float32)


def frontend_differences(a: dict, b: dict) -> list[str]:
    """How two front-end records (corpus.json's or a checkpoint's `frontend`) compute different features: the fbank
    options and the normalisation, with global CMVN's statistics; where they were taken from (split, frame count,
    library version) is left aside. Empty: the same features for the same audio."""
    fa, fb = FbankOptions.from_record(a), FbankOptions.from_record(b)
    out = [f"{k} {getattr(fa, k)!r} vs {getattr(fb, k)!r}" for k in asdict(fa) if getattr(fa, k) != getattr(fb, k)]
    ca, cb = a.get("cmvn") or {"kind": "none"}, b.get("cmvn") or {"kind": "none"}
    if ca.get("kind") != cb.get("kind"):
        out.append(f"cmvn {ca.get('kind')} vs {cb.get('kind')}")
    elif ca.get("kind") == "global" and (ca.get("mean") != cb.get("mean") or ca.get("std") != cb.get("std")):
        out.append(f"global cmvn statistics (of split {ca.get('split')!r}, {ca.get('frames')} frames vs "
                   f"{cb.get('split')!r}, {cb.get('frames')} frames)")
    return out


class FrontEnd:
    """A recorded front end applied to new audio: filterbank, then the recorded normalisation.

    `record` is a corpus's (or a checkpoint's) `frontend`: the fbank options and `cmvn` ({"kind": "none"},
    {"kind": "utterance"} or {"kind": "global", "mean": [...], "std": [...]}). `features(samples)` gives exactly
    what `data import` stored for the same int16 samples."""

    def __init__(self, record: dict, where: str = "frontend"):
        self.record = record
        self.options = FbankOptions.from_record(record, where)
        self.fbank = Fbank(self.options)
        cmvn = record.get("cmvn") or {"kind": "none"}
        self.cmvn_kind = cmvn.get("kind")
        if self.cmvn_kind not in CMVN_KINDS:
            raise OfflineKDError(f"{where}: cmvn kind {self.cmvn_kind!r} (known: {', '.join(CMVN_KINDS)})")
        self.mean = self.std = None
        if self.cmvn_kind == "global":
            try:
                self.mean = np.asarray(cmvn["mean"], dtype=np.float32)
                self.std = np.asarray(cmvn["std"], dtype=np.float32)
            except (KeyError, TypeError, ValueError):
                raise OfflineKDError(f"{where}: global cmvn without its mean and std") from None
            if self.mean.shape != (self.options.num_mel_bins,) or self.std.shape != self.mean.shape:
                raise OfflineKDError(f"{where}: global cmvn statistics of {self.mean.shape[0]} bins, the filterbank "
                                     f"has {self.options.num_mel_bins}")

    @property
    def sample_rate(self) -> int:
        return self.options.sample_rate

    @property
    def feature_dim(self) -> int:
        return self.options.num_mel_bins

    def features(self, samples: np.ndarray) -> np.ndarray:
        """(frames, num_mel_bins) float32 from int16 samples at `sample_rate`, normalised as recorded."""
        return self.normalise(self.fbank.compute(samples))

    def normalise(self, f: np.ndarray) -> np.ndarray:
        """The recorded normalisation of raw filterbank frames (T, num_mel_bins)."""
        if self.cmvn_kind == "utterance":
            return normalise_utterance(f)
        if self.cmvn_kind == "global":
            return apply_global(f, self.mean, self.std)
        return f
