"""Creating a cache split and writing it from a background thread, shard by shard, resumably.

The teacher produces batches in the dump plan's order; `SplitWriter.put` hands each batch to a bounded queue and a
background thread encodes it, buffers frames until a whole shard is ready and writes the shard once. Only after a
shard is stored does the split's `frames_done` advance (an atomic attribute update), so a process killed at any
moment (SIGKILL included) leaves a cache whose recorded progress is always backed by complete data: the rerun
recomputes from the first batch that reaches past `frames_done` and writes the very same bytes.
"""

from __future__ import annotations

import queue
import threading
from typing import Optional

import numpy as np
import zarr

from offline_kd.cache.layout import compressors, field_arrays, utterance_checksum
from offline_kd.errors import OfflineKDError

_STOP = object()     # flush everything and mark the split complete
_ABORT = object()    # flush whole shards only (an error or interrupt in the main thread)


def create_split(root: zarr.Group, name: str, utterance_ids: list[str], offsets: np.ndarray,
                 input_frames: np.ndarray, feature_hashes: list[str], fields: list, chunk_frames: int,
                 shard_chunks: int, compressor: str, level: int) -> zarr.Group:
    """Create the split group with its per-utterance index and empty per-frame arrays."""
    g = root.create_group(name, overwrite=True)
    n, total = len(utterance_ids), int(offsets[-1])

    def small(key, data, dtype):
        a = g.create_array(key, shape=data.shape, chunks=(max(1, len(data)),), dtype=dtype,
                           compressors=compressors(compressor, level))
        a[:] = data
    small("utterance_id", np.asarray(utterance_ids, dtype=object), str)
    small("offset", np.asarray(offsets, np.int64), "int64")
    small("input_frames", np.asarray(input_frames, np.int64), "int64")
    small("feature_sha256", np.asarray(feature_hashes, dtype=object), str)
    g.create_array("checksum", shape=(n,), chunks=(max(1, n),), dtype="uint32", fill_value=0)
    for path, shape, dtype in fields:
        g.create_array(path, shape=(total, *shape), chunks=(chunk_frames, *shape),
                       shards=(chunk_frames * shard_chunks, *shape), dtype=dtype, fill_value=0,
                       compressors=compressors(compressor, level))
    g.attrs.update({"num_utterances": n, "num_frames": total, "frames_done": 0, "utterances_done": 0,
                    "complete": False})
    return g


class SplitWriter:
    """Background writer for one split. `put(outputs)` takes a batch of consecutive utterances in plan order:
    a list of (plan position, {"log_probs": (T', V), "best_path": (T',), "hidden": {L: (T', H)}}) numpy arrays."""

    def __init__(self, group: zarr.Group, log_prob_codec, hidden_codecs: dict, shard_frames: int,
                 queue_size: int = 4):
        self.g = group
        self.lp_codec, self.hidden_codecs = log_prob_codec, hidden_codecs
        self.paths = [p for p, _, _ in field_arrays(log_prob_codec, hidden_codecs)]
        self.arrays = {p: group[p] for p in self.paths}
        self.offsets = group["offset"][:]
        self.total = int(self.offsets[-1])
        self.shard_frames = shard_frames
        self.frames_done = int(group.attrs["frames_done"])
        self.buf: dict[str, list[np.ndarray]] = {p: [] for p in self.paths}
        self.buf_start = self.frames_done          # frame index of the first buffered frame
        self.buf_frames = 0
        self.checksums: dict[int, int] = {}        # plan position -> crc, until its frames are stored
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
        """Flush everything, mark the split complete, re-raise any writer error."""
        self._send(_STOP)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        """Store the whole shards already computed (a rerun resumes after them) and stop."""
        self._send(_ABORT)
        self.thread.join()

    # ---------------------------------------------------------------------------------------- writer thread
    def _run(self) -> None:
        try:
            while True:
                item = self.q.get()
                if item is _ABORT:
                    self._flush(final=False)
                    return
                if item is _STOP:
                    self._flush(final=True)
                    if self.frames_done != self.total:
                        raise OfflineKDError(f"split {self.g.basename}: {self.frames_done} of {self.total} frames "
                                             f"written at the end of the dump (internal error)")
                    self.g.attrs.update({"complete": True})
                    return
                self._add(item)
        except BaseException as exc:  # surfaced in the main thread by put()/close()
            self.error = exc

    def _encode(self, outputs: list) -> tuple[dict, list[tuple[int, int, int]]]:
        """Encode a batch (consecutive plan positions) into {path: (F, ...)} and per-utterance frame spans."""
        lp = np.concatenate([o["log_probs"] for _, o in outputs])
        enc = {"best_path": np.concatenate([o["best_path"] for _, o in outputs]).astype(np.int32)}
        enc.update({"log_probs" + k: v for k, v in self.lp_codec.encode(lp).items()})
        for layer, codec in self.hidden_codecs.items():
            h = np.concatenate([o["hidden"][layer] for _, o in outputs])
            enc.update({f"hidden_{layer}" + k: v for k, v in codec.encode(h).items()})
        spans, pos = [], 0
        for p, o in outputs:
            n = len(o["log_probs"])
            spans.append((p, pos, pos + n))
            pos += n
        return enc, spans

    def _add(self, outputs: list) -> None:
        first = outputs[0][0]
        start = int(self.offsets[first])
        enc, spans = self._encode(outputs)
        for p, lo, hi in spans:
            if int(self.offsets[p + 1]) - int(self.offsets[p]) != hi - lo:
                raise OfflineKDError(f"utterance at plan position {p}: teacher produced {hi - lo} frames, "
                                     f"plan says {int(self.offsets[p + 1]) - int(self.offsets[p])}")
            self.checksums[p] = utterance_checksum(enc, lo, hi)
        # on resume the first batch may start before frames_done: drop what is already stored
        skip = max(0, self.buf_start + self.buf_frames - start)
        if start + skip != self.buf_start + self.buf_frames:
            raise OfflineKDError("cache writer received batches out of plan order (internal error)")
        for path in self.paths:
            self.buf[path].append(enc[path][skip:])
        self.buf_frames += len(enc["best_path"]) - skip
        self._flush(final=False)

    def _flush(self, final: bool) -> None:
        while self.buf_frames > 0:
            # write up to the next shard boundary, or everything at the end
            boundary = (self.buf_start // self.shard_frames + 1) * self.shard_frames
            end = min(boundary, self.total)
            if self.buf_start + self.buf_frames < end and not final:
                return
            n = min(end, self.buf_start + self.buf_frames) - self.buf_start
            for path in self.paths:
                block = np.concatenate(self.buf[path]) if len(self.buf[path]) > 1 else self.buf[path][0]
                self.arrays[path][self.buf_start:self.buf_start + n] = block[:n]
                self.buf[path] = [block[n:]]
            self.buf_start += n
            self.buf_frames -= n
            self._commit(self.buf_start)

    def _commit(self, frames_done: int) -> None:
        """Record checksums of utterances now fully stored, then advance the split's progress."""
        done = [p for p in sorted(self.checksums) if self.offsets[p + 1] <= frames_done]
        if done:
            arr = self.g["checksum"]
            arr[done[0]:done[-1] + 1] = np.asarray([self.checksums.pop(p) for p in done], np.uint32)
        n_done = int(np.searchsorted(self.offsets[1:], frames_done, side="right"))
        self.frames_done = frames_done
        self.g.attrs.update({"frames_done": frames_done, "utterances_done": n_done})
