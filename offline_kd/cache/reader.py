"""Reading a teacher cache: opened read-only, refused unless complete, codecs rebuilt from the cache itself.

`TeacherCache(path).split(name)` gives a `CacheSplit`; `targets(utt_id)` is one utterance's `TeacherFrames`, joined
by id (what a user's own dataset calls); `read_range(lo, hi)` decodes the utterances at dump-order positions
lo..hi-1 with one contiguous read per stored array (a length-sorted batch is such a range, what the trainer's
dataset reads), and `read(position)` a single utterance.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os

import numpy as np
import zarr

from offline_kd.cache import integrity
from offline_kd.cache.codecs import codec_from_spec, load_state
from offline_kd.cache.confidence import read as read_confidence
from offline_kd.cache.fields import LOG_PROBS, FieldTable, extra_field_specs, hidden_field
from offline_kd.cache.lm_targets import NBest
from offline_kd.cache.meta import CacheMeta
from offline_kd.cache.progress import split_progress
from offline_kd.cache.layout import decode_hashes, decode_ids, open_group, read_meta, utterance_checksum
from offline_kd.data.targets import TeacherFrames
from offline_kd.errors import OfflineKDError

try:                      # zarr's event loop (the one Array.__getitem__ runs its reads on)
    from zarr.core.sync import _get_loop as _zarr_loop
except ImportError:       # pragma: no cover - another zarr 3 layout: read the arrays one after another
    _zarr_loop = None


def _zarr_sync(coro):
    """Run `coro` on zarr's event loop and wait for it. An interrupt (Ctrl-C) or exit while waiting cancels the
    read's tasks and waits for them briefly: zarr's exit handler closes its loop after 0.2 s, and a loop still
    busy with a large read fails there with 'RuntimeError: Cannot close a running event loop'."""
    loop = _zarr_loop()
    fut = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return fut.result()
    except BaseException:
        fut.cancel()            # cancels the gather and each array's chunk tasks
        try:                    # the loop has run the cancellations once it runs this
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(timeout=5)
        except (concurrent.futures.TimeoutError, RuntimeError):
            pass
        raise


def build_codecs(codecs: dict, root: zarr.Group):
    """The cache's codecs from their stored specs (the metadata's `codecs`), with their fitted state read from the
    cache."""
    lp = load_state(codec_from_spec("log_probs", codecs["log_probs"]), LOG_PROBS, root)
    hidden = {int(layer): load_state(codec_from_spec("hidden", spec), hidden_field(layer), root)
              for layer, spec in codecs["hidden"].items()}
    return lp, hidden


class CacheSplit:
    def __init__(self, cache: "TeacherCache", name: str):
        self.cache, self.name = cache, name
        g = cache.root[name]
        self.group = g
        self.attrs = dict(g.attrs)
        self.utterance_ids = decode_ids(g["utterance_id"][...])
        self.offsets = g["offset"][:].astype(np.int64)
        self.input_frames = g["input_frames"][:].astype(np.int64)
        self.feature_hashes = decode_hashes(g["feature_sha256"][...])
        self.position = {u: i for i, u in enumerate(self.utterance_ids)}
        self.paths = cache.fields.paths()
        # per-utterance crc32 of the stored bytes, checked on every read (a complete split has them)
        self.checksums = g["checksum"][:] if cache.verify_reads and self.attrs.get("complete") else None
        self._arrays = None
        self._pid = None
        self._nbest = None

    def __len__(self) -> int:
        return len(self.utterance_ids)

    @property
    def confidence(self):
        """(U,) the teacher's confidence in each utterance's 1-best, in position order (cache/confidence.py); None
        for a cache dumped before it was stored."""
        if not hasattr(self, "_confidence"):
            self._confidence = read_confidence(self.group)
        return self._confidence

    @property
    def has_lm_nbest(self) -> bool:
        return "lm_nbest" in self.attrs

    def lm_nbest(self, position: int) -> list:
        """The stored LM N-best of the utterance at `position`: [(token ids, weight), ...] (dump.lm_targets)."""
        if self._nbest is None:
            self._nbest = NBest(self.group)
        return self._nbest.get(position)

    @property
    def num_frames(self) -> int:
        return int(self.offsets[-1])

    def _arr(self) -> dict:
        # zarr arrays are re-opened after a fork (DataLoader workers) to avoid sharing event-loop state
        if self._arrays is None or self._pid != os.getpid():
            self._arrays = {p: self.group[p] for p in self.paths}
            self._pid = os.getpid()
        return self._arrays

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_arrays"] = None
        state["_nbest"] = None
        return state

    def read_raw(self, lo: int, hi: int) -> dict:
        """Stored (encoded) arrays of positions lo..hi-1: {path: (F, ...)} with F = offsets[hi] - offsets[lo].
        The arrays are fetched concurrently on zarr's event loop (one round trip, not one per array)."""
        a, b = int(self.offsets[lo]), int(self.offsets[hi])
        arrays = self._arr()
        if _zarr_loop is None:
            results = []
            for arr in arrays.values():
                try:
                    results.append(arr[a:b])
                except Exception as exc:  # noqa: BLE001 - zarr raises many types for damaged objects
                    results.append(exc)
        else:
            async def fetch():
                return await asyncio.gather(*(arr.async_array.getitem(slice(a, b)) for arr in arrays.values()),
                                            return_exceptions=True)
            results = _zarr_sync(fetch())
        for path, res in zip(arrays, results):
            if isinstance(res, BaseException):
                self.cache.refuse_if_replaced()
                first = (str(res).splitlines() or [""])[0][:160]
                raise OfflineKDError(f"{self.cache.path}: split {self.name}, array {path}: cannot read frames "
                                     f"{a}..{b} (utterances {self.utterance_ids[lo]} ...): {res.__class__.__name__}: "
                                     f"{first}; the cache is damaged: run `offline-kd cache verify "
                                     f"{self.cache.path}`")
        return dict(zip(arrays, results))

    def check(self, raw: dict, lo: int, hi: int) -> None:
        """Refuse bytes that do not match the checksums the dump wrote (a changed value, or a missing object that
        zarr would silently read back as its fill value)."""
        if self.checksums is None:
            return
        base = int(self.offsets[lo])
        for p in range(lo, hi):
            a, b = int(self.offsets[p]) - base, int(self.offsets[p + 1]) - base
            if utterance_checksum(raw, a, b) != int(self.checksums[p]):
                self.cache.refuse_if_replaced()
                raise OfflineKDError(f"{self.cache.path}: split {self.name}, utterance {self.utterance_ids[p]}: the "
                                     f"stored bytes of its arrays ({', '.join(sorted(raw))}) do not match the "
                                     f"checksum the dump wrote; the cache is corrupted (run `offline-kd cache verify "
                                     f"{self.cache.path}`; verify_reads: false skips this check)")

    def decode(self, raw: dict, layers=None) -> dict:
        """Encoded arrays -> {"log_probs": (F, V) float32, "hidden": {L: (F, H) float32}, "best_path": (F,)}, the
        hidden layers in `layers` only (all with None)."""
        return self.cache.fields.decode(raw, layers)

    def read_range_codes(self, lo: int, hi: int, layers=None) -> list[dict]:
        """The stored codes of positions lo..hi-1, checked, not decoded: per utterance {path: (frames, ...)} of
        best_path, the log-prob arrays and the hidden arrays of `layers` (all with None)."""
        raw = self.read_raw(lo, hi)
        self.check(raw, lo, hi)
        wanted = list(self.cache.fields.select(raw, layers))
        base = int(self.offsets[lo])
        return [{k: raw[k][int(self.offsets[p]) - base:int(self.offsets[p + 1]) - base] for k in wanted}
                for p in range(lo, hi)]

    def read_range(self, lo: int, hi: int, layers=None) -> list[dict]:
        """Decoded utterances at positions lo..hi-1, each {"log_probs", "hidden", "best_path"} (numpy)."""
        raw = self.read_raw(lo, hi)
        self.check(raw, lo, hi)
        dec = self.decode(raw, layers)
        base = int(self.offsets[lo])
        out = []
        for p in range(lo, hi):
            a, b = int(self.offsets[p]) - base, int(self.offsets[p + 1]) - base
            out.append({k: ({L: h[a:b] for L, h in v.items()} if k == "hidden" else v[a:b]) for k, v in dec.items()})
        return out

    def read(self, position: int) -> dict:
        return self.read_range(position, position + 1)[0]

    def targets(self, utterance_id: str, layers=None, num_frames: int | None = None) -> TeacherFrames:
        """The cached teacher outputs of `utterance_id` (the hidden layers in `layers`, all with None). With
        `num_frames` (the student's output frames for it), a different frame count is a one-line error."""
        p = self.position.get(utterance_id)
        if p is None:
            raise OfflineKDError(f"{self.cache.path}: utterance '{utterance_id}' is not in split '{self.name}' of the "
                                 f"cache ({len(self)} utterances; dump the corpus it comes from)")
        d = self.read_range(p, p + 1, layers)[0]
        n = len(d["best_path"])
        if num_frames is not None and int(num_frames) != n:
            raise OfflineKDError(f"{self.cache.path}: utterance '{utterance_id}': the cache holds {n} teacher frames, "
                                 f"the student gives {int(num_frames)} (the cache's subsampling is "
                                 f"{self.cache.meta.subsampling}: dump it at the student's rate, dump.subsampling)")
        conf = self.confidence
        return TeacherFrames(utterance_id, d["log_probs"], d["best_path"], d["hidden"], self.cache.meta.subsampling,
                             None if conf is None else float(conf[p]),
                             self.lm_nbest(p) if self.has_lm_nbest else None,
                             {k: v for k, v in d.items() if k not in ("log_probs", "best_path", "hidden")})


class TargetDecoder:
    """Decodes a batch's stored codes on a torch device with a cache's codecs (`distill.decode_on: device`), the
    codecs' fitted state (a low-rank basis, a prior) kept on each device it is used on. Lives in the training
    process only (never pickled into loader workers)."""

    def __init__(self, cache: "TeacherCache"):
        self.fields = cache.fields
        self._state: dict = {}

    def _on(self, device) -> dict:
        key = str(device)
        if key not in self._state:
            self._state[key] = self.fields.device_states(device)
        return self._state[key]

    def decode_torch(self, codes: dict, device) -> tuple:
        """{path: codes on `device`} -> log-probs (F, V) and {layer: (F, H)} float32 on `device`, and the further
        fields {name: (F, ...)} as stored."""
        lp, hidden = self.fields.decode_torch(codes, self._on(device))
        return lp, hidden, {f.name: codes[f.name] for f in self.fields.extra if f.name in codes}


class TeacherCache:
    def __init__(self, path: str, storage_options: dict | None = None, require_complete: bool = True,
                 verify_reads: bool = True):
        self.path = str(path)
        self.storage_options = storage_options
        self.verify_reads = verify_reads
        self.root = open_group(self.path, "r", storage_options)
        self.meta = CacheMeta.from_dict(read_meta(self.root, self.path), self.path)
        if require_complete and not self.meta.complete:
            done = {s: f"{split_progress(self.root[s])[1]}/{self.root[s].attrs.get('num_utterances')}"
                    for s in self.meta.splits if s in self.root and self.root[s].attrs.get("created")}
            raise OfflineKDError(f"{self.path}: the cache is incomplete (utterances written per split: {done}); "
                                 f"rerun the same `offline-kd dump-teacher` command to finish it")
        self.lp_codec, self.hidden_codecs = build_codecs(self.meta.codecs, self.root)
        self.fields = FieldTable(self.lp_codec, self.hidden_codecs, extra_field_specs(self.meta.codecs))
        self.layers = sorted(self.hidden_codecs)
        self.layer_dims = self.meta.layer_dims
        if verify_reads and self.meta.complete:
            self._check_seal()

    def _check_seal(self) -> None:
        """The sealed digests of the metadata and of every array that is not per-frame (ids, offsets, fitted codec
        state, ...): what shapes decoding is checked once at open; per-frame data is checked on every read."""
        problems, _ = integrity.check(self.root, self.splits, self.fields.paths())
        if problems:
            raise OfflineKDError(f"{self.path}: the cache was changed after its dump: {'; '.join(problems[:3])}"
                                 f"{' ...' if len(problems) > 3 else ''} (`offline-kd cache verify` lists all; "
                                 f"dump it again)")

    def refuse_if_replaced(self) -> None:
        """Called when a read fails: if the cache at this path is no longer the one this reader opened (another
        dump wrote it since, e.g. `dump-teacher --overwrite`; readers take no lock), say so rather than call it
        corrupted."""
        try:
            now = read_meta(open_group(self.path, "r", self.storage_options), self.path)
        except Exception:  # noqa: BLE001 - gone, or half-written by the new dump
            now = None
        if now is None or (now.get("created"), now.get("identity_sha256")) != (self.meta.created,
                                                                               self.meta.identity_sha256):
            raise OfflineKDError(f"{self.path}: the cache was replaced while reading (another dump wrote it after "
                                 f"this run opened it, e.g. dump-teacher --overwrite); start the run again once "
                                 f"that dump has finished")

    @property
    def splits(self) -> list[str]:
        return list(self.meta.splits)

    def split(self, name: str) -> CacheSplit:
        if name not in self.meta.splits:
            raise OfflineKDError(f"{self.path}: split '{name}' is not in the cache (has: {', '.join(self.splits)})")
        return CacheSplit(self, name)
