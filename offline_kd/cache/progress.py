"""A split's write progress: which shards are stored (`_progress/shard_done`), which utterances lie wholly in
stored shards, and how far a split has got. Read by the writer, the reader, `cache info`, `cache verify` and the
dump's resume."""

from __future__ import annotations

import numpy as np
import zarr


def shard_starts(offsets: np.ndarray, shard_frames: int) -> np.ndarray:
    """(num_shards + 1,) positions: utterances whose first frame lies in shard s are starts[s]:starts[s+1]."""
    total = int(offsets[-1])
    num_shards = max(1, -(-total // shard_frames))
    bounds = np.arange(num_shards + 1, dtype=np.int64) * shard_frames
    return np.searchsorted(offsets[:-1], bounds, side="left").astype(np.int64)


def shard_frame_count(shards, shard_frames: int, total: int) -> int:
    """Frames in the given shards (the last shard of a split may be short)."""
    return int(sum(min((s + 1) * shard_frames, total) - s * shard_frames for s in shards))


def whole_utterances(done: np.ndarray, offsets: np.ndarray, shard_frames: int) -> np.ndarray:
    """(N,) bool: utterances all of whose frames lie in shards flagged in `done`."""
    missing = np.concatenate([[0], np.cumsum(~done)])
    first, last = offsets[:-1] // shard_frames, (offsets[1:] - 1) // shard_frames
    return missing[last + 1] - missing[first] == 0


def shards_done(group: zarr.Group) -> np.ndarray:
    """(num_shards,) bool: which shards of a split are stored."""
    if group.attrs.get("complete"):
        return np.ones(int(group.attrs["num_shards"]), dtype=bool)
    return group["_progress/shard_done"][:].astype(bool)


def split_progress(group: zarr.Group) -> tuple[int, int]:
    """(frames, utterances) of a split whose data is stored (for an incomplete split: in flagged shards)."""
    n, total = int(group.attrs["num_utterances"]), int(group.attrs["num_frames"])
    if group.attrs.get("complete"):
        return total, n
    done = shards_done(group)
    sf = int(group.attrs["shard_frames"])
    return (shard_frame_count(np.flatnonzero(done), sf, total),
            int(whole_utterances(done, group["offset"][:], sf).sum()))
