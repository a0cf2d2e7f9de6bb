"""HDF5 corpora: one file per split, features of all utterances concatenated along time.

Layout (see docs/data-format.md):

    CORPUS/corpus.json        {"format_version", "feature_dim", "tokenizer", "word_separator"}
    CORPUS/vocab.txt          one token per line, line 0 = <blank>
    CORPUS/{split}.h5
        features        float32 (total_frames, D)   all utterances back to back
        offsets         int64   (N + 1,)            utterance i = features[offsets[i]:offsets[i+1]]
        utterance_ids   str     (N,)
        transcripts     str     (N,)                words separated by single spaces ("" in an untranscribed split)
        feature_sha256  str     (N,)                sha256 of each utterance's float32 feature bytes
        nonfinite       int64   (N,)                count of NaN/Inf values per utterance (written by the writer)
        attrs["transcribed"]  bool                  False for a split of untranscribed audio (teacher targets only)
      and, imported from audio with --keep-audio (waveform teachers read it):
        audio           int16   (total_samples,)    every utterance's samples back to back, at attrs["audio_sample_rate"]
        audio_offsets   int64   (N + 1,)            utterance i = audio[audio_offsets[i]:audio_offsets[i+1]]
        audio_sha256    str     (N,)                sha256 of each utterance's int16 sample bytes

Readers hold only the small per-utterance arrays in memory and read feature slices on demand, so a corpus of any
size opens instantly. The h5py handle is opened lazily per process, so readers survive DataLoader forking.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import h5py
import numpy as np

from offline_kd.data.vocab import Vocabulary
from offline_kd.errors import OfflineKDError

FORMAT_VERSION = 1
_STR = h5py.string_dtype(encoding="utf-8")


CHANGED_FEATURES = ("its features differ from their stored feature_sha256 (feature_sha256 mismatch: changed after "
                    "the corpus was written, so targets cached for them would be stale; re-import the corpus and "
                    "dump the teacher again)")


def feature_sha256(features: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(features, dtype=np.float32).tobytes()).hexdigest()


def audio_sha256(samples: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(samples, dtype=np.int16).tobytes()).hexdigest()


CHANGED_AUDIO = ("its audio differs from its stored audio_sha256 (changed after the corpus was written; re-import the "
                 "corpus and dump the teacher again)")


class SplitWriter:
    """Append utterances to `{split}.h5`; the file appears under its final name only after `close()`.
    `transcribed=False` writes a split of untranscribed audio: every transcript must be empty. With
    `audio_sample_rate`, every `add` also takes the utterance's int16 samples (kept for waveform teachers)."""

    def __init__(self, path: str | Path, feature_dim: int, transcribed: bool = True,
                 audio_sample_rate: int | None = None):
        self.path = Path(path)
        self.transcribed = transcribed
        self.tmp = self.path.with_name(self.path.name + ".partial")
        self.feature_dim = feature_dim
        self._f = h5py.File(self.tmp, "w")
        self._feats = self._f.create_dataset(
            "features", shape=(0, feature_dim), maxshape=(None, feature_dim), dtype="float32",
            chunks=(max(1, min(1024, 2 ** 20 // (4 * feature_dim))), feature_dim))
        self._offsets = [0]
        self._ids: list[str] = []
        self._texts: list[str] = []
        self._hashes: list[str] = []
        self._nonfinite: list[int] = []
        self._pending: list[np.ndarray] = []
        self._pending_frames = 0
        self.audio_sample_rate = audio_sample_rate
        if audio_sample_rate:
            self._audio = self._f.create_dataset("audio", shape=(0,), maxshape=(None,), dtype="int16",
                                                 chunks=(2 ** 18,))
            self._audio_offsets = [0]
            self._audio_hashes: list[str] = []
            self._pending_audio: list[np.ndarray] = []

    def add(self, utterance_id: str, features: np.ndarray, transcript: str, audio: np.ndarray | None = None) -> None:
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise OfflineKDError(
                f"utterance {utterance_id}: features have shape {features.shape}, expected (T, {self.feature_dim})")
        if (audio is not None) != bool(self.audio_sample_rate):
            raise OfflineKDError(f"utterance {utterance_id}: audio given to a split written "
                                 f"{'with' if self.audio_sample_rate else 'without'} audio, or the other way round")
        if audio is not None:
            audio = np.asarray(audio)
            if audio.dtype != np.int16 or audio.ndim != 1:
                raise OfflineKDError(f"utterance {utterance_id}: audio must be 1-D int16, got {audio.dtype} "
                                     f"{audio.shape}")
            self._audio_offsets.append(self._audio_offsets[-1] + audio.shape[0])
            self._audio_hashes.append(audio_sha256(audio))
            self._pending_audio.append(audio)
        transcript = transcript or ""
        if not self.transcribed and transcript.strip():
            raise OfflineKDError(f"utterance {utterance_id}: has a transcript, but {self.path.name} is a split of "
                                 f"untranscribed audio")
        self._ids.append(utterance_id)
        self._texts.append(" ".join(transcript.split()))
        self._hashes.append(feature_sha256(features))
        self._nonfinite.append(int((~np.isfinite(features)).sum()))
        self._offsets.append(self._offsets[-1] + features.shape[0])
        self._pending.append(features)
        self._pending_frames += features.shape[0]
        if self._pending_frames >= 65536:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        block = np.concatenate(self._pending)
        n = self._feats.shape[0]
        self._feats.resize(n + block.shape[0], axis=0)
        self._feats[n:] = block
        self._pending, self._pending_frames = [], 0
        if self.audio_sample_rate and self._pending_audio:
            block = np.concatenate(self._pending_audio)
            n = self._audio.shape[0]
            self._audio.resize(n + block.shape[0], axis=0)
            self._audio[n:] = block
            self._pending_audio = []

    def close(self) -> None:
        if len(set(self._ids)) != len(self._ids):
            seen, dups = set(), []
            for u in self._ids:
                if u in seen:
                    dups.append(u)
                seen.add(u)
            self.abort()
            raise OfflineKDError(f"{self.path.name}: duplicate utterance ids: {', '.join(dups[:10])}")
        self._flush()
        f = self._f
        f.create_dataset("offsets", data=np.asarray(self._offsets, dtype=np.int64))
        f.create_dataset("utterance_ids", data=np.asarray(self._ids, dtype=object), dtype=_STR)
        f.create_dataset("transcripts", data=np.asarray(self._texts, dtype=object), dtype=_STR)
        f.create_dataset("feature_sha256", data=np.asarray(self._hashes, dtype=object), dtype=_STR)
        f.create_dataset("nonfinite", data=np.asarray(self._nonfinite, dtype=np.int64))
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["feature_dim"] = self.feature_dim
        f.attrs["transcribed"] = self.transcribed
        if self.audio_sample_rate:
            f.create_dataset("audio_offsets", data=np.asarray(self._audio_offsets, dtype=np.int64))
            f.create_dataset("audio_sha256", data=np.asarray(self._audio_hashes, dtype=object), dtype=_STR)
            f.attrs["audio_sample_rate"] = int(self.audio_sample_rate)
        f.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self._f.close()
        finally:
            self.tmp.unlink(missing_ok=True)


class SplitReader:
    """Random access to one split. Small per-utterance arrays live in memory; features are read on demand."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise OfflineKDError(f"corpus split not found: {self.path}")
        try:
            with h5py.File(self.path, "r") as f:
                for key in ("features", "offsets", "utterance_ids", "transcripts"):
                    if key not in f:
                        raise OfflineKDError(f"{self.path}: missing dataset '{key}' (see docs/data-format.md)")
                self.feature_dim = int(f["features"].shape[1])
                self.offsets = f["offsets"][:].astype(np.int64)
                self.utterance_ids = [s.decode() if isinstance(s, bytes) else s for s in f["utterance_ids"][:]]
                self.transcripts = [s.decode() if isinstance(s, bytes) else s for s in f["transcripts"][:]]
                self.feature_hashes = ([s.decode() if isinstance(s, bytes) else s for s in f["feature_sha256"][:]]
                                       if "feature_sha256" in f else None)
                self.nonfinite = f["nonfinite"][:] if "nonfinite" in f else None
                self.transcribed = bool(f.attrs.get("transcribed", True))
                self.audio_sample_rate = int(f.attrs["audio_sample_rate"]) if "audio_offsets" in f else None
                self.audio_offsets = f["audio_offsets"][:].astype(np.int64) if "audio_offsets" in f else None
                self.audio_hashes = ([s.decode() if isinstance(s, bytes) else s for s in f["audio_sha256"][:]]
                                     if "audio_sha256" in f else None)
        except OSError as exc:
            raise OfflineKDError(f"{self.path}: not a readable HDF5 file ({exc})") from None
        if len(self.offsets) != len(self.utterance_ids) + 1 or len(self.transcripts) != len(self.utterance_ids):
            raise OfflineKDError(f"{self.path}: offsets/utterance_ids/transcripts lengths disagree")
        self.lengths = np.diff(self.offsets)
        self.index = {u: i for i, u in enumerate(self.utterance_ids)}
        self._h5 = None
        self._pid = None

    def __len__(self) -> int:
        return len(self.utterance_ids)

    def _file(self):
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._h5

    #: check every read against the utterance's stored feature_sha256 (`verify_reads`)
    verify_features = False

    def verify_reads(self, on: bool = True) -> None:
        """Check each utterance's features against their stored sha256 when they are read (train-student does, so
        that features changed after the dump never meet targets computed on the old ones)."""
        self.verify_features = on

    def features(self, i: int) -> np.ndarray:
        """(T, D) float32 features of utterance i."""
        x = self._file()["features"][self.offsets[i]:self.offsets[i + 1]]
        if self.verify_features and self.feature_hashes is not None and feature_sha256(x) != self.feature_hashes[i]:
            raise OfflineKDError(f"{self.path}: utterance {self.utterance_ids[i]}: {CHANGED_FEATURES}")
        return x

    @property
    def has_audio(self) -> bool:
        """True when the split keeps its audio (imported with --keep-audio)."""
        return self.audio_offsets is not None

    def audio(self, i: int) -> np.ndarray:
        """Utterance i's int16 samples at `audio_sample_rate` (checked against their sha256 with `verify_reads`)."""
        if self.audio_offsets is None:
            raise OfflineKDError(f"{self.path}: the split keeps no audio (import it with `data import --keep-audio` "
                                 f"for a teacher that reads waveforms)")
        x = self._file()["audio"][self.audio_offsets[i]:self.audio_offsets[i + 1]]
        if self.verify_features and self.audio_hashes is not None and audio_sha256(x) != self.audio_hashes[i]:
            raise OfflineKDError(f"{self.path}: utterance {self.utterance_ids[i]}: {CHANGED_AUDIO}")
        return x

    def changed_audio(self) -> list[int]:
        """Indices of the utterances whose kept audio no longer matches its stored sha256 (reads all of it)."""
        if self.audio_hashes is None:
            return []
        f = self._file()["audio"]
        return [i for i in range(len(self))
                if audio_sha256(f[self.audio_offsets[i]:self.audio_offsets[i + 1]]) != self.audio_hashes[i]]

    def changed_features(self) -> list[int]:
        """Indices of the utterances whose features no longer match their stored sha256 (reads every feature)."""
        if self.feature_hashes is None:
            return []
        return [i for i in range(len(self)) if self.compute_feature_hash(i) != self.feature_hashes[i]]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_h5"] = None
        return state

    def require_transcripts(self, what: str) -> None:
        """Refuse an untranscribed split where reference transcripts are needed (`what` says for what)."""
        if not self.transcribed:
            raise OfflineKDError(f"{self.path.name} is a split of untranscribed audio; {what} needs transcripts "
                                 f"(untranscribed splits serve as distill.untranscribed_splits)")

    def compute_feature_hash(self, i: int) -> str:
        return feature_sha256(self.features(i))

    def all_feature_hashes(self) -> list[str]:
        """Every utterance's feature sha256: the stored ones, or computed for a split written before they were."""
        return self.feature_hashes or [self.compute_feature_hash(i) for i in range(len(self))]


class ConcatSplitReader:
    """Several transcribed splits read as one (`data.train_split: [a, b]`): the same interface as SplitReader,
    utterance i of the concatenation being utterance i - start of the split it falls in."""

    def __init__(self, readers: list[SplitReader]):
        if not readers:
            raise ValueError("ConcatSplitReader needs at least one split")
        self.readers = list(readers)
        self.path = Path("+".join(r.path.name for r in readers))
        self.feature_dim = readers[0].feature_dim
        self.starts = np.cumsum([0] + [len(r) for r in readers])
        self.utterance_ids = [u for r in readers for u in r.utterance_ids]
        self.transcripts = [t for r in readers for t in r.transcripts]
        self.lengths = np.concatenate([r.lengths for r in readers])
        self.transcribed = all(r.transcribed for r in readers)
        self.index = {}
        for r, start in zip(readers, self.starts):
            for u, i in r.index.items():
                if u in self.index:
                    raise OfflineKDError(f"utterance {u} is in more than one of {', '.join(str(x.path) for x in readers)}")
                self.index[u] = int(start) + i
        self.feature_hashes = (None if any(r.feature_hashes is None for r in readers)
                               else [h for r in readers for h in r.feature_hashes])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _locate(self, i: int) -> tuple[SplitReader, int]:
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.readers[k], i - int(self.starts[k])

    def features(self, i: int) -> np.ndarray:
        reader, j = self._locate(i)
        return reader.features(j)

    def compute_feature_hash(self, i: int) -> str:
        reader, j = self._locate(i)
        return reader.compute_feature_hash(j)

    def verify_reads(self, on: bool = True) -> None:
        for r in self.readers:
            r.verify_reads(on)

    def all_feature_hashes(self) -> list[str]:
        return [h for r in self.readers for h in r.all_feature_hashes()]

    def require_transcripts(self, what: str) -> None:
        for r in self.readers:
            r.require_transcripts(what)


class Corpus:
    """A corpus directory: its vocabulary, feature dimension and splits."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        meta_path = self.dir / "corpus.json"
        if not meta_path.is_file():
            raise OfflineKDError(f"not a corpus directory (no corpus.json): {self.dir}")
        try:
            self.meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise OfflineKDError(f"{meta_path}: invalid JSON ({exc})") from None
        for key in ("feature_dim", "tokenizer"):
            if key not in self.meta:
                raise OfflineKDError(f"{meta_path}: missing key '{key}'")
        self.feature_dim = int(self.meta["feature_dim"])
        self.vocab = Vocabulary.load(self.dir / "vocab.txt", self.meta["tokenizer"], self.meta.get("word_separator"))

    def split_names(self) -> list[str]:
        return sorted(p.stem for p in self.dir.glob("*.h5"))

    def split(self, name: str) -> SplitReader:
        path = self.dir / f"{name}.h5"
        if not path.is_file():
            have = sorted(p.stem for p in self.dir.glob("*.h5"))
            raise OfflineKDError(f"split '{name}' not found in {self.dir} (have: {', '.join(have) or 'none'})")
        return SplitReader(path)


def write_corpus_meta(directory: str | Path, vocab: Vocabulary, feature_dim: int, **extra) -> None:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    vocab.save(d)
    meta = {"format_version": FORMAT_VERSION, "feature_dim": feature_dim, "tokenizer": vocab.tokenizer,
            "word_separator": vocab.word_separator, **extra}
    (d / "corpus.json").write_text(json.dumps(meta, indent=2) + "\n")
