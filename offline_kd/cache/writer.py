"""Creating a cache split and writing it from a background thread, shard by shard, resumably, from one or many
processes.

Per-frame arrays are stored in shards of `shard_frames` frames. A writer owns a set of target shards (all of them in
a single-process dump; a contiguous block per rank under torchrun) and is the only process that ever writes them:
no two writers touch the same chunk, shard or object. The teacher produces batches in the dump plan's order;
`SplitWriter.put` hands each batch to a bounded queue and a background thread encodes it, buffers frames until one
of its shards is complete and writes that shard once. Only then does it store the shard's per-utterance checksums
(`_progress/checksums`, one object per shard) and its done flag (`_progress/shard_done`, one object per shard), so a
process killed at any moment (SIGKILL included) leaves flags that are always backed by complete data: a rerun, with
any number of processes, recomputes only the batches that reach into shards not flagged done and writes the very
same bytes (with `dump.encode_on: device` the batches arrive encoded where the teacher ran, `EncodedBatch`; a
low-rank code may then differ by one step from the host's where a matrix product rounds differently, and a rerun
on the same device writes the same bytes again). `finalize_split` (one process, after every writer finished)
gathers the checksums into `checksum` and marks the split complete.
"""

from __future__ import annotations

import queue
import threading
from typing import Optional

import numpy as np
import torch
import zarr
from zarr.codecs import TransposeCodec

from offline_kd.cache.fields import PROVIDED, FieldTable
from offline_kd.cache.progress import shard_starts
from offline_kd.cache.layout import compressors, encode_hashes, encode_ids, utterance_checksum
from offline_kd.errors import InternalError, OfflineKDError

_STOP = object()     # flush everything and mark the split complete
_ABORT = object()    # stop now (an error or interrupt in the main thread); written shards stay flagged


def create_split(root: zarr.Group, name: str, utterance_ids: list[str], offsets: np.ndarray,
                 input_frames: np.ndarray, feature_hashes: list[str], fields: list, chunk_frames: int,
                 shard_chunks: int, compressor: str, level: int) -> zarr.Group:
    """Create the split group with its per-utterance index, empty per-frame arrays and progress records."""
    g = root.create_group(name, overwrite=True)
    n, total = len(utterance_ids), int(offsets[-1])
    shard_frames = chunk_frames * shard_chunks
    starts = shard_starts(np.asarray(offsets, np.int64), shard_frames)
    per_shard = max(1, int(np.diff(starts).max()))

    def small(key, data):
        a = g.create_array(key, shape=data.shape, chunks=(max(1, len(data)), *data.shape[1:]), dtype=data.dtype,
                           compressors=compressors(compressor, level))
        a[...] = data
    small("utterance_id", encode_ids(utterance_ids))
    small("offset", np.asarray(offsets, np.int64))
    small("input_frames", np.asarray(input_frames, np.int64))
    small("feature_sha256", encode_hashes(feature_hashes))
    g.create_array("checksum", shape=(n,), chunks=(max(1, n),), dtype="uint32", fill_value=0)
    num_shards = len(starts) - 1
    g.create_array("_progress/shard_done", shape=(num_shards,), chunks=(1,), dtype="uint8", fill_value=0)
    g.create_array("_progress/checksums", shape=(num_shards, per_shard), chunks=(1, per_shard), dtype="uint32",
                   fill_value=0)
    for path, shape, dtype, component_major in fields:
        # component-major chunks put each coefficient's values side by side, where the compressor's entropy
        # stage sees one component's narrow distribution at a time (about 8% smaller for quantised coefficients)
        filters = [TransposeCodec(order=(1, 0))] if component_major and len(shape) == 1 else None
        g.create_array(path, shape=(total, *shape), chunks=(chunk_frames, *shape),
                       shards=(shard_frames, *shape), dtype=dtype, fill_value=0, filters=filters,
                       compressors=compressors(compressor, level))
    g.attrs.update({"num_utterances": n, "num_frames": total, "shard_frames": shard_frames,
                    "num_shards": num_shards, "complete": False, "created": True})
    return g


def finalize_split(group: zarr.Group) -> None:
    """Gather the per-shard checksums into `checksum` and mark the split complete (every shard must be stored)."""
    done = group["_progress/shard_done"][:].astype(bool)
    if not done.all():
        missing = np.flatnonzero(~done)
        raise OfflineKDError(f"split {group.basename}: {len(missing)} of {len(done)} shards were not written "
                             f"(first missing: {missing[0]}); rerun the same dump to finish them")
    offsets = group["offset"][:]
    starts = shard_starts(offsets, int(group.attrs["shard_frames"]))
    rows = group["_progress/checksums"][:]
    checksum = np.concatenate([rows[s, :starts[s + 1] - starts[s]] for s in range(len(starts) - 1)])
    group["checksum"][:] = checksum.astype(np.uint32)
    group.attrs.update({"complete": True})


class EncodedBatch:
    """A batch already encoded where the teacher ran (`dump.encode_on: device`): the plan positions of its
    consecutive utterances, their frame counts, and {stored array path: (sum of frames, ...) numpy codes}."""

    def __init__(self, positions: list[int], frames: list[int], enc: dict):
        self.positions, self.frames, self.enc = positions, frames, enc


class DeviceEncoder:
    """Encodes a batch of teacher outputs where they were computed (`dump.encode_on: device`): the valid frames of
    every utterance, the codecs' `encode_torch` with their fitted state on the device, and only the codes copied
    to the host, cast to the dtypes the cache declares."""

    def __init__(self, lp_codec, hidden_codecs: dict, device, extra=()):
        self.fields = FieldTable(lp_codec, hidden_codecs, extra)
        self.state = self.fields.device_states(device)
        self.dtypes = {p: np.dtype(dt) for p, _, dt, _ in self.fields.arrays()}

    def encode(self, pos: int, log_probs, out_len, hidden: dict) -> EncodedBatch:
        sizes = out_len.tolist()
        lp = torch.cat([log_probs[:t, b] for b, t in enumerate(sizes)]).float()       # (frames, V)
        hid = {L: torch.cat([hidden[L][b, :t] for b, t in enumerate(sizes)]).float() for L in self.fields.hidden}
        hid.update({k: torch.cat([hidden[k][b, :t] for b, t in enumerate(sizes)]).float()    # an ensemble's
                    for k in PROVIDED if k in hidden})                                       # member_probs
        codes = self.fields.encode_torch(lp, hid, self.state)
        enc = {k: v.cpu().numpy().astype(self.dtypes[k], copy=False) for k, v in codes.items()}
        return EncodedBatch([pos + b for b in range(len(sizes))], sizes, enc)


class SplitWriter:
    """Background writer of one split's `targets` shards. `put(outputs)` takes a batch of consecutive utterances in
    plan order: a list of (plan position, {"log_probs": (T', V), "best_path": (T',), "hidden": {L: (T', H)}})
    numpy arrays, which the writer thread encodes, or an `EncodedBatch`. Batches must come in plan order; batches
    that touch none of the targets may be left out."""

    def __init__(self, group: zarr.Group, log_prob_codec, hidden_codecs: dict, shard_frames: int,
                 targets: list[int], queue_size: int = 4, extra=()):
        self.g = group
        self.lp_codec, self.hidden_codecs = log_prob_codec, hidden_codecs
        self.fields = FieldTable(log_prob_codec, hidden_codecs, extra)
        self.paths = self.fields.paths()
        self.arrays = {p: group[p] for p in self.paths}
        self.done_flags, self.checksum_rows = group["_progress/shard_done"], group["_progress/checksums"]
        self.offsets = group["offset"][:]
        self.total = int(self.offsets[-1])
        self.shard_frames = shard_frames
        self.starts = shard_starts(self.offsets, shard_frames)
        self.targets = sorted(int(t) for t in targets)
        self.target_set = set(self.targets)
        self.next = 0                               # index into targets of the next shard to write
        self.buf: dict[str, list[np.ndarray]] = {p: [] for p in self.paths}
        self.buf_start = 0                          # frame index of the first buffered frame
        self.buf_frames = 0
        self.checksums: dict[int, int] = {}         # plan position -> crc, until its shard's row is stored
        self.q: queue.Queue = queue.Queue(maxsize=max(1, queue_size))
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, name="cache-writer", daemon=True)
        self.thread.start()

    # ---------------------------------------------------------------------------------------- main thread
    def _send(self, item) -> bool:
        """Queue an item unless the writer thread has died (then its error is in self.error)."""
        while self.thread.is_alive():
            try:
                self.q.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def put(self, outputs: list) -> None:
        if self.error is not None or not self._send(outputs):
            raise self.error or OfflineKDError("the cache writer stopped unexpectedly")

    def close(self) -> None:
        """Write what is left of the targets, re-raise any writer error."""
        self._send(_STOP)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        """Stop; the shards already written stay flagged, a rerun resumes after them."""
        self._send(_ABORT)
        self.thread.join()

    def __enter__(self) -> "SplitWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Without an error: write what is left (close); with one: stop at once (abort) and let it propagate."""
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # ---------------------------------------------------------------------------------------- writer thread
    def _run(self) -> None:
        try:
            while True:
                item = self.q.get()
                if item is _ABORT:
                    return
                if item is _STOP:
                    self._flush()
                    if self.next != len(self.targets):
                        raise InternalError(f"split {self.g.basename}: shard {self.targets[self.next]} did not "
                                             f"receive all its frames by the end of the dump (internal error)")
                    return
                self._add(item)
        except BaseException as exc:  # surfaced in the main thread by put()/close()
            self.error = exc

    def _encode(self, outputs: list) -> tuple[dict, list[tuple[int, int, int]]]:
        """Encode a batch (consecutive plan positions) into {path: (F, ...)} and per-utterance frame spans."""
        given = [k for k in PROVIDED if k in outputs[0][1]["hidden"]]      # an ensemble's member_probs
        enc = self.fields.encode(np.concatenate([o["log_probs"] for _, o in outputs]),
                                 np.concatenate([o["best_path"] for _, o in outputs]),
                                 {L: np.concatenate([o["hidden"][L] for _, o in outputs])
                                  for L in [*self.fields.hidden, *given]})
        spans, pos = [], 0
        for p, o in outputs:
            n = len(o["log_probs"])
            spans.append((p, pos, pos + n))
            pos += n
        return enc, spans

    def _add(self, outputs) -> None:
        if isinstance(outputs, EncodedBatch):
            start = int(self.offsets[outputs.positions[0]])
            enc, ends = outputs.enc, np.cumsum([0] + list(outputs.frames))
            spans = [(p, int(ends[j]), int(ends[j + 1])) for j, p in enumerate(outputs.positions)]
            if set(enc) != set(self.paths):
                raise InternalError(f"encoded batch with arrays {sorted(enc)}, expected {sorted(self.paths)} "
                                    f"(internal error)")
        else:
            start = int(self.offsets[outputs[0][0]])
            enc, spans = self._encode(outputs)
        for p, lo, hi in spans:
            if int(self.offsets[p + 1]) - int(self.offsets[p]) != hi - lo:
                raise OfflineKDError(f"utterance at plan position {p}: teacher produced {hi - lo} frames, "
                                     f"plan says {int(self.offsets[p + 1]) - int(self.offsets[p])}")
            if int(self.offsets[p]) // self.shard_frames in self.target_set:
                self.checksums[p] = utterance_checksum(enc, lo, hi)
        end = self.buf_start + self.buf_frames
        if self.buf_frames and start < end:
            raise InternalError("cache writer received batches out of plan order (internal error)")
        if start > end or not self.buf_frames:     # a gap: batches that touch none of the targets were skipped
            self.buf = {p: [] for p in self.paths}
            self.buf_start, self.buf_frames = start, 0
        for path in self.paths:
            self.buf[path].append(enc[path])
        self.buf_frames += len(enc["best_path"])
        self._flush()

    def _take(self, lo: int, hi: int) -> dict:
        """Frames [lo, hi) of the buffer; everything before hi is dropped from it."""
        out = {}
        for path in self.paths:
            block = np.concatenate(self.buf[path]) if len(self.buf[path]) > 1 else self.buf[path][0]
            out[path] = block[lo - self.buf_start:hi - self.buf_start]
            self.buf[path] = [block[hi - self.buf_start:]]
        self.buf_frames -= hi - self.buf_start
        self.buf_start = hi
        return out

    def _flush(self) -> None:
        while self.next < len(self.targets) and self.buf_frames:
            s = self.targets[self.next]
            lo, hi = s * self.shard_frames, min((s + 1) * self.shard_frames, self.total)
            end = self.buf_start + self.buf_frames
            if end <= lo:
                return
            if self.buf_start > lo:
                raise InternalError(f"split {self.g.basename}: frames of shard {s} were never received "
                                     f"(internal error)")
            if end < hi:
                return
            block = self._take(lo, hi)
            for path in self.paths:
                self.arrays[path][lo:hi] = block[path]
            a, b = int(self.starts[s]), int(self.starts[s + 1])
            if b > a:
                row = np.zeros(self.checksum_rows.shape[1], np.uint32)
                row[:b - a] = [self.checksums.pop(p) for p in range(a, b)]
                self.checksum_rows[s] = row
            self.done_flags[s] = 1
            self.next += 1
