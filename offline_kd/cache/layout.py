"""The cache layout on Zarr v3 (documented for plain-zarr readers in docs/cache-format.md).

    CACHE.zarr/                       root group, attrs["offline_kd"] = metadata (see `CacheMeta`)
      lowrank/hidden_{L}/basis, mean, scale[, step]  fitted state of the low-rank hidden codec (only with it)
      lowrank/log_probs/basis, mean, scale  fitted state of the low-rank log-prob codec (only with that codec)
      prior/log_probs                 mean teacher distribution, for the top-k codec's prior tail
      {split}/                        attrs: num_utterances, num_frames, created, complete, shard_frames ...
        utterance_id    uint8  (N, L) in dump order (longest first): UTF-8, zero-padded to the longest id
                                      (format 1: a zarr-python `string` array, still read)
        offset          int64  (N+1,) utterance i = frames offset[i]:offset[i+1] of every per-frame array
        input_frames    int64  (N,)   feature frames before subsampling
        feature_sha256  uint8  (N, 32) sha256 digest of the utterance's float32 input features (format 1: hex str)
        checksum        uint32 (N,)   crc32 of the utterance's stored bytes, all per-frame arrays by sorted path
        best_path       int32  (F,)   teacher argmax per frame (the greedy 1-best before collapsing)
        log_probs[...]  (F, ...)      codec arrays, e.g. log_probs (F, V) or log_probs/values (F, k) ...
        hidden_{L}[...] (F, ...)      codec arrays per cached layer L

Per-frame arrays concatenate all utterances of a split, chunked along frames and grouped into shards, so the number
of stored objects grows with frames / shard size, never with utterances, and a length-sorted training batch is a
contiguous read.
"""

from __future__ import annotations

import zlib

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from offline_kd.cache.fields import FieldTable
from offline_kd.errors import OfflineKDError

FORMAT_VERSION = 2           # 2: ids and hashes as uint8 arrays (core Zarr v3 types, readable by any implementation)
READABLE_VERSIONS = (1, 2)
META_KEY = "offline_kd"


def encode_ids(ids: list[str]) -> np.ndarray:
    """Utterance ids -> (N, L) uint8: UTF-8 bytes, zero-padded (an id cannot contain NUL)."""
    raw = [u.encode("utf-8") for u in ids]
    out = np.zeros((len(raw), max([1] + [len(r) for r in raw])), dtype=np.uint8)
    for i, r in enumerate(raw):
        if b"\0" in r:
            raise OfflineKDError(f"utterance id {ids[i]!r} contains a NUL character")
        out[i, :len(r)] = np.frombuffer(r, dtype=np.uint8)
    return out


def decode_ids(stored: np.ndarray) -> list[str]:
    """Inverse of encode_ids; a format-1 string array is returned as it is."""
    if stored.ndim == 1:
        return [str(u) for u in stored]
    return [bytes(row).rstrip(b"\0").decode("utf-8") for row in stored]


def encode_hashes(hexes: list[str]) -> np.ndarray:
    return np.array([np.frombuffer(bytes.fromhex(h), dtype=np.uint8) for h in hexes], dtype=np.uint8).reshape(
        len(hexes), 32)


def decode_hashes(stored: np.ndarray) -> list[str]:
    if stored.ndim == 1:
        return [str(h) for h in stored]
    return [bytes(row).hex() for row in stored]


def field_arrays(log_prob_codec, hidden_codecs: dict) -> list[tuple[str, tuple, str, bool]]:
    """All per-frame arrays of a split, as (path, per-frame shape, dtype, stored component-major): the field
    table's (offline_kd.cache.fields)."""
    return FieldTable(log_prob_codec, hidden_codecs).arrays()


def compressors(name: str, level: int):
    if name == "zstd":
        return [ZstdCodec(level=level)]
    if name == "blosc":
        return [BloscCodec(cname="zstd", clevel=level, shuffle="bitshuffle")]
    if name == "none":
        return None
    raise OfflineKDError(f"codecs.compressor: unknown compressor '{name}' (zstd | blosc | none)")


def utterance_checksum(encoded: dict, lo: int, hi: int) -> int:
    """crc32 over the stored bytes of frames [lo, hi) of every field (dict path -> (F, ...) array)."""
    crc = 0
    for path in sorted(encoded):
        crc = zlib.crc32(np.ascontiguousarray(encoded[path][lo:hi]).tobytes(), crc)
    return crc & 0xFFFFFFFF


def open_group(path: str, mode: str, storage_options: dict | None = None) -> zarr.Group:
    """A local path or any fsspec URL (s3://, gs://, file://, ...). Storage options come from the config; fsspec
    also reads its own environment variables (e.g. FSSPEC_S3_ENDPOINT_URL) and S3 credentials come from the usual
    AWS_* variables."""
    options = dict(storage_options or {})
    if path.startswith("file://"):
        options.setdefault("auto_mkdir", True)     # a local fsspec filesystem does not create folders by itself
    try:
        return zarr.open_group(store=path, mode=mode, storage_options=options or None)
    except FileNotFoundError:
        raise OfflineKDError(f"no cache at {path}") from None
    except ImportError as exc:
        raise OfflineKDError(f"{path}: this URL needs an fsspec backend that is not installed ({exc}); "
                             f"e.g. pip install s3fs for s3://") from None
    except Exception as exc:  # noqa: BLE001 - zarr raises many types for "not a group"
        raise OfflineKDError(f"{path}: cannot open as a Zarr v3 group ({exc.__class__.__name__}: {exc})") from None


def read_meta(group: zarr.Group, path: str) -> dict:
    meta = group.attrs.get(META_KEY)
    if not isinstance(meta, dict):
        raise OfflineKDError(f"{path}: not an offline-kd cache (no '{META_KEY}' metadata)")
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise OfflineKDError(f"{path}: cache format version {meta.get('format_version')} is not supported "
                             f"(this offline-kd reads versions {', '.join(map(str, READABLE_VERSIONS))})")
    return meta
