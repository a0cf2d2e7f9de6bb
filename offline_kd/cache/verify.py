"""`offline-kd cache verify`: completeness, per-utterance checksums and shapes, the integrity seal.

Structural checks read every utterance's stored bytes back and compare them with the crc32 recorded by the writer,
and check offsets against the recorded input frame counts. The comparison with a live teacher (`--teacher`) is
offline_kd.distillation.fidelity; `format_verify` prints both.
"""

from __future__ import annotations


import numpy as np

from offline_kd.cache import integrity
from offline_kd.cache.layout import utterance_checksum
from offline_kd.cache.reader import TeacherCache
from offline_kd.cache.progress import shard_starts, shards_done, whole_utterances
from offline_kd.data.validate import output_frames
from offline_kd.errors import OfflineKDError

TEMPERATURES = (1.0, 3.0, 4.0)
_READ_FRAMES = 65536   # structural check reads utterances in runs of about this many frames


def _stored_checksums(split) -> tuple[np.ndarray, np.ndarray]:
    """(checksums, whole): per utterance, its stored checksum and whether all its frames are stored. A complete
    split has them in `checksum`; an incomplete one in the per-shard rows of the shards written so far."""
    g = split.group
    if g.attrs.get("complete"):
        return g["checksum"][:], np.ones(len(split), dtype=bool)
    done = shards_done(g)
    sf = int(g.attrs["shard_frames"])
    starts = shard_starts(split.offsets, sf)
    rows = g["_progress/checksums"][:]
    sums = np.zeros(len(split), np.uint32)
    for sh in np.flatnonzero(done):
        sums[starts[sh]:starts[sh + 1]] = rows[sh, :starts[sh + 1] - starts[sh]]
    return sums, whole_utterances(done, split.offsets, sf)


def structural_check(cache: TeacherCache, log=print) -> dict:
    problems, checked = [], 0
    for s in cache.splits:
        attrs = cache.root[s].attrs if s in cache.root else {}
        if not (attrs.get("created") or attrs.get("complete")):
            problems.append(f"{s}: not started")
            continue
        split = cache.split(s)
        sums, whole = _stored_checksums(split)       # an incomplete split: only what is written
        if np.any(np.diff(split.offsets) < 0) or split.offsets[0] != 0:
            problems.append(f"{s}: offsets are not increasing")
        expected = output_frames(split.input_frames, cache.meta.subsampling)
        bad_len = np.nonzero(np.diff(split.offsets) != expected)[0]
        problems += [f"{s}/{split.utterance_ids[i]}: {int(np.diff(split.offsets)[i])} frames stored, "
                     f"{int(expected[i])} expected" for i in bad_len[:10]]
        n, lo = len(split), 0
        while lo < n:
            if not whole[lo]:
                lo += 1
                continue
            hi = int(np.searchsorted(split.offsets, split.offsets[lo] + _READ_FRAMES, side="right"))
            hi = min(max(hi - 1, lo + 1), n)
            hi = lo + int(np.argmin(whole[lo:hi])) if not whole[lo:hi].all() else hi
            try:
                raw = split.read_raw(lo, hi)
            except OfflineKDError as exc:           # an unreadable object: a finding, reported with its name
                problems.append(str(exc))
                checked += hi - lo
                lo = hi
                continue
            base = int(split.offsets[lo])
            for path, arr in raw.items():
                if arr.shape[0] != int(split.offsets[hi]) - base:
                    problems.append(f"{s}/{path}: shape {arr.shape} does not match the offsets")
            for p in range(lo, hi):
                a, b = int(split.offsets[p]) - base, int(split.offsets[p + 1]) - base
                if utterance_checksum(raw, a, b) != int(sums[p]):
                    problems.append(f"{s}/{split.utterance_ids[p]}: checksum mismatch")
                checked += 1
            lo = hi
    return {"utterances_checked": checked, "problems": problems}


def verify_cache(path: str, storage_options: dict | None = None, log=print) -> dict:
    """Completeness, per-utterance checksums and shapes, the seal (offline_kd.distillation.fidelity adds the live
    teacher's comparison)."""
    cache = TeacherCache(path, storage_options, require_complete=False, verify_reads=False)   # checked here
    res = {"path": path, "complete": bool(cache.meta.complete)}
    problems = []
    if not res["complete"]:
        problems.append("cache is incomplete (rerun the same dump-teacher command to finish it)")
    st = structural_check(cache, log)
    res["utterances_checked"] = st["utterances_checked"]
    res["data_problems"] = len(st["problems"])         # per-frame bytes and offsets (the seal's findings apart)
    problems += st["problems"]
    if res["complete"]:
        fields = cache.fields.paths()
        sealed_problems, res["sealed"] = integrity.check(cache.root, cache.splits, fields)
        problems += sealed_problems
    res["problems"] = problems
    res["ok"] = not problems
    return res


def format_verify(res: dict) -> str:
    lines = [f"cache {res['path']}: {'OK' if res['ok'] else 'PROBLEMS FOUND'} "
             f"({res['utterances_checked']} utterances checked, {'complete' if res['complete'] else 'incomplete'})"]
    lines += [f"  - {p}" for p in res["problems"][:50]]
    if res["complete"] and res.get("sealed") is False and integrity.MISSING_SEAL not in res["problems"]:
        lines.append("  note: a format-1 cache written before integrity seals: metadata and non-per-frame arrays "
                     "are not covered")
    f = res.get("fidelity")
    if f:
        lines.append(f"  fidelity on {f['frames_compared']} frames (live teacher vs cache):")
        for t in TEMPERATURES:
            lines.append(f"    KL T={t:g}: mean {f[f'kl_T{t:g}_mean']:.3e}  max {f[f'kl_T{t:g}_max']:.3e}")
        lines.append(f"    top-1 agreement {100 * f['top1_agreement']:.3f}%")
        for L, e in f["hidden_relative_sq_error"].items():
            lines.append(f"    hidden layer {L}: relative squared error {e:.3e}")
        lines.append(f"    greedy WER cached vs live {f['greedy_wer_cached_vs_live']:.2f}%")
    return "\n".join(lines)
