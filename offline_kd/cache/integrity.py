"""Digests over everything a cache stores that the per-utterance crc32 checksums do not cover.

The per-frame arrays (log-prob codes, best path, hidden states) are covered utterance by utterance by `checksum`.
Everything else that shapes decoding is sealed when the dump completes, in the root attribute `offline_kd_integrity`:

    arrays       {path: sha256}  every array that is not a per-frame field: ids, offsets, input frame counts,
                                 feature hashes, the checksums themselves, progress flags, fitted codec state
                                 (low-rank bases, means, scales, steps, the prior)
    meta_sha256  sha256 of the canonical JSON of the root metadata (`offline_kd`: codecs, classes, layers,
                 subsampling, vocabulary, ...) and of every split's attributes

`cache verify` recomputes them, and every reader checks them when it opens a complete cache. Format-1 caches
written before the seal existed have no such attribute (verify says so); the seal predates format 2, so a format-2
cache without it has had it removed and is refused, like a changed one.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import zarr

from offline_kd.cache.layout import META_KEY

INTEGRITY_KEY = "offline_kd_integrity"


def array_sha256(arr) -> str:
    """sha256 of an array's dtype, shape and values (strings as length-prefixed UTF-8)."""
    data = np.asarray(arr[...])
    h = hashlib.sha256(f"{arr.dtype}|{tuple(arr.shape)}|".encode())
    if data.dtype.kind in "OUT":
        for s in data.ravel().tolist():
            b = str(s).encode()
            h.update(len(b).to_bytes(8, "little") + b)
    else:
        h.update(np.ascontiguousarray(data).tobytes())
    return h.hexdigest()


def meta_sha256(root: zarr.Group, splits: list[str], meta: dict | None = None) -> str:
    doc = {"meta": dict(root.attrs[META_KEY] if meta is None else meta),
           "splits": {s: dict(root[s].attrs) for s in splits if s in root}}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def sealed_arrays(root: zarr.Group, splits: list[str], fields: list[str]) -> dict:
    """path -> array for every array of the cache except the per-frame fields (`{split}/{field path}`)."""
    per_frame = {f"{s}/{f}" for s in splits for f in fields}
    return {path: node for path, node in root.members(max_depth=None)
            if isinstance(node, zarr.Array) and path not in per_frame}


def seal(root: zarr.Group, meta: dict, splits: list[str], fields: list[str]) -> dict:
    """The digests of a cache whose root metadata will be `meta` (the dump's last step: the caller stores the
    complete metadata and this seal in one attribute write, so a complete cache is always sealed)."""
    arrays = sealed_arrays(root, splits, fields)
    return {"arrays": {p: array_sha256(a) for p, a in sorted(arrays.items())},
            "meta_sha256": meta_sha256(root, splits, meta)}


MISSING_SEAL = ("the integrity seal is missing ('offline_kd_integrity' in the root zarr.json): every complete "
                "cache of format 2 is sealed by its dump, so it was removed; nothing in the cache can be trusted "
                "(dump it again)")


def may_lack_seal(root: zarr.Group, splits: list[str]) -> bool:
    """Only a format-1 cache (written before seals existed) may be complete without a seal: its metadata says
    format 1 and its ids are stored the format-1 way (a format-2 layout claiming format 1 was edited)."""
    meta = root.attrs.get(META_KEY) or {}
    if meta.get("format_version") != 1:
        return False
    for s in splits:
        try:
            if root[s]["utterance_id"].ndim != 1 or root[s]["feature_sha256"].ndim != 1:
                return False
        except (KeyError, TypeError):
            return False
    return True


def check(root: zarr.Group, splits: list[str], fields: list[str]) -> tuple[list[str], bool]:
    """-> (problems, sealed). A format-1 cache without a seal (written before it existed) gives no problems,
    sealed False; any other cache without one gives the problem MISSING_SEAL."""
    doc = root.attrs.get(INTEGRITY_KEY)
    if not doc:
        return ([] if may_lack_seal(root, splits) else [MISSING_SEAL]), False
    problems = []
    if meta_sha256(root, splits) != doc.get("meta_sha256"):
        problems.append("metadata changed since the dump (the root 'offline_kd' attributes or a split's attributes "
                        "differ from their sealed sha256)")
    arrays = sealed_arrays(root, splits, fields)
    sealed = doc.get("arrays", {})
    for path in sorted(set(sealed) - set(arrays)):
        problems.append(f"{path}: array missing")
    for path in sorted(set(arrays) - set(sealed)):
        problems.append(f"{path}: array not in the seal (added after the dump)")
    for path in sorted(set(arrays) & set(sealed)):
        try:
            digest = array_sha256(arrays[path])
        except Exception as exc:  # noqa: BLE001 - an unreadable object is a finding, not a crash
            problems.append(f"{path}: unreadable ({exc.__class__.__name__}: {str(exc).splitlines()[0][:120]})")
            continue
        if digest != sealed[path]:
            problems.append(f"{path}: contents differ from the sealed sha256")
    return problems, True
