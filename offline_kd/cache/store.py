"""The cache store's lifecycle on the writing side: refuse what must not be replaced, prepare (or find, to resume)
the root, the fitted codec state and every split's arrays, seal a finished cache, and say which batches a rank
still has to compute. Reading is in reader.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import zarr

from offline_kd.cache import confidence, integrity
from offline_kd.cache.fields import FieldTable, extra_field_specs
from offline_kd.cache.layout import META_KEY, open_group
from offline_kd.cache.lm_targets import drop_lm_targets
from offline_kd.cache.meta import CacheMeta
from offline_kd.cache.plan import SplitPlan
from offline_kd.cache.reader import build_codecs
from offline_kd.cache.writer import create_split, finalize_split
from offline_kd.config import DumpConfig
from offline_kd.errors import OfflineKDError, arg


# what a dump stores before its metadata (the fitted codec state): a group holding only these and no metadata is
# what a dump killed before its metadata was written left, and a rerun takes it for an empty cache
FITTED_STATE_GROUPS = ("lowrank", "prior", "codebook")


def refuse_foreign_directory(output: str, overwrite: bool) -> None:
    """A local directory that holds files but no offline-kd cache is never replaced, even with --overwrite
    (`--set dump.output=data/demo` must not wipe a corpus)."""
    if "://" in output:
        return
    p = Path(output)
    if p.is_dir() and any(p.iterdir()):
        meta = p / "zarr.json"
        node = json.loads(meta.read_text() or "{}") if meta.is_file() else {}
        if node.get("node_type") == "group" and not node.get("attributes") \
                and {e.name for e in p.iterdir()} <= {"zarr.json", *FITTED_STATE_GROUPS}:
            return      # an empty group, or one with fitted state only: what a dump stopped before its metadata left
        if not meta.is_file() or META_KEY not in node.get("attributes", {}):
            raise OfflineKDError(f"{output} is a non-empty directory that is not an offline-kd cache; "
                                 f"choose another dump.output (it is never replaced, not even with {arg('overwrite')})")


def _exists(output: str, storage_options: dict | None) -> bool:
    """Whether anything is stored at `output` (nothing is created before the fit, so a fit that fails leaves
    nothing at dump.output)."""
    try:
        zarr.open_group(store=output, mode="r", storage_options=dict(storage_options or {}) or None)
    except FileNotFoundError:
        return False
    except Exception:  # noqa: BLE001 - something else is there; open_group names it
        return True
    return True


def prepare_store(cfg: DumpConfig, meta: CacheMeta, plans: dict[str, SplitPlan], fit_state: Callable[[], dict], overwrite: bool,
                  log) -> dict:
    """(rank 0 only) Open, check or (re)create the cache and every split's arrays before any rank writes."""
    refuse_foreign_directory(cfg.output, overwrite)
    root = open_group(cfg.output, "a", cfg.storage_options) if _exists(cfg.output, cfg.storage_options) else None
    old = root.attrs.get(META_KEY) if root is not None else None
    resume = False
    if isinstance(old, dict):
        if old.get("identity_sha256") == meta.identity_sha256 and not overwrite:
            resume = True
            if old.get("complete"):
                return {"resume": True, "complete": True}
        elif not overwrite and meta.differs_only_in_lm_targets(old, plans):
            resume = True
            _redo_lm_targets(root, old, meta, list(plans), cfg.output, log)
        elif not overwrite and (added := meta.added_splits(old, plans)):
            resume = True
            _extend(root, old, meta, added, cfg.output, log)
        elif not overwrite:
            raise OfflineKDError(
                f"{cfg.output} holds a cache from another teacher, corpus or dump config "
                f"(teacher {old.get('teacher', {}).get('sha256', '?')[:12]}, created {old.get('created', '?')}; its "
                f"splits {', '.join(old.get('splits') or [])}{_what_differs(old, meta)}); use {arg('overwrite')} to replace "
                f"it or choose another dump.output")
    elif root is not None and not set(root.keys()) <= set(FITTED_STATE_GROUPS) and not overwrite:
        raise OfflineKDError(f"{cfg.output} exists and is not an offline-kd cache; use {arg('overwrite')} or another path")
    if not resume:
        # fit before anything is replaced: a fit that fails must not have wiped the old cache
        fitted = fit_state()
        root = open_group(cfg.output, "w", cfg.storage_options)
        for path, arr in fitted.items():
            a = root.create_array(path, shape=arr.shape, dtype="float32", chunks=arr.shape)
            a[:] = arr
        root.attrs.update({META_KEY: meta.to_dict()})
    codecs = build_codecs(meta.codecs, root)     # with any fitted state stored above
    fields = FieldTable(codecs[0], codecs[1], extra_field_specs(meta.codecs)).arrays()
    for split in plans:
        if resume and split in root and root[split].attrs.get("created"):
            continue                               # (a split killed while being created is made again)
        p = plans[split]
        create_split(root, split, p.utterance_ids, p.offsets, p.input_frames, p.hashes, fields, cfg.chunk_frames,
                     cfg.shard_chunks, cfg.codecs.compressor, cfg.codecs.level)
    return {"resume": resume, "complete": False}


def _redo_lm_targets(root: zarr.Group, old: dict, meta: CacheMeta, splits: list[str], output: str, log) -> None:
    """A cache whose frames are what this dump would write, but whose N-best settings (`dump.lm_targets`) differ:
    take the new settings and identity, mark the cache incomplete and unsealed (one attribute write, so a reader
    refuses it from here on and a dump killed after it resumes), then drop every split's N-best; the splits stay as
    they are and the dump's last stage decodes the N-best again and seals the cache."""
    new = {**old, "dump_config": {**old.get("dump_config", {}), "lm_targets": meta.dump_config.get("lm_targets")},
           "identity_sha256": meta.identity_sha256, "complete": False}
    new.pop("completed", None)
    attrs = {k: v for k, v in root.attrs.asdict().items() if k != integrity.INTEGRITY_KEY}
    root.attrs.put({**attrs, META_KEY: new})
    for name in splits:                      # (this dump's split names: the identity matched, so they are the cache's)
        if name in root:
            drop_lm_targets(root[name])
    log(f"{output}: only the LM N-best settings (dump.lm_targets) differ from the cached dump's; "
        f"keeping the cached frames and redoing the N-best")


def _what_differs(old: dict, meta: CacheMeta) -> str:
    """A hint at why a cache is not this dump's (the first of teacher, vocabulary, corpus, settings that differs)."""
    if (old.get("teacher") or {}).get("weights_sha256") != meta.teacher.get("weights_sha256"):
        return "; the teacher's weights differ"
    if old.get("vocab_sha256") != meta.vocab_sha256:
        return "; the vocabulary differs"
    a, b = old.get("dump_config") or {}, meta.dump_config
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and k not in ("teacher", "output", "progress",
                                                                                        "num_workers", "device")]
    if keys:
        return f"; dump settings differ: {', '.join(keys[:5])}"
    return "; the corpus's utterances or features differ"


def _extend(root: zarr.Group, old: dict, meta: CacheMeta, added: list[str], output: str, log) -> None:
    """A sealed (or unfinished) cache of this dump but for the splits it lacks: take this dump's metadata (its
    identity, splits and settings; the stored codecs and creation time kept), marked incomplete and unsealed in one
    attribute write, so a reader refuses it from here on and a dump killed after it resumes; the new splits are
    then created beside the cached ones, which stay as they are, and the dump's last stage seals it again."""
    new = {**meta.to_dict(), "codecs": old.get("codecs", meta.codecs), "created": old.get("created"),
           "complete": False}
    new.pop("completed", None)
    attrs = {k: v for k, v in root.attrs.asdict().items() if k != integrity.INTEGRITY_KEY}
    root.attrs.put({**attrs, META_KEY: new})
    log(f"{output}: adding split(s) {', '.join(added)}: the cached splits stay as they are, the teacher runs on "
        f"the new ones only, then the cache is sealed again")


def needed_batches(p: SplitPlan, mine: np.ndarray, shard_frames: int) -> list[tuple[int, list[int]]]:
    """(plan position of the first utterance, batch) for every batch whose frames reach into a shard in `mine`."""
    offsets, starts = p.offsets, np.cumsum([0] + [len(b) for b in p.batches])
    wanted = np.zeros(int(-(-offsets[-1] // shard_frames)) + 1, dtype=np.int64)
    wanted[mine] = 1
    cum = np.concatenate([[0], np.cumsum(wanted)])
    out = []
    for bi, batch in enumerate(p.batches):
        lo, hi = int(offsets[starts[bi]]), int(offsets[starts[bi + 1]])
        if hi > lo and cum[(hi - 1) // shard_frames + 1] - cum[lo // shard_frames] > 0:
            out.append((int(starts[bi]), batch))
    return out


def finalize(root: zarr.Group, splits: list[str], lp_codec, hidden_codecs: dict, before_seal=None) -> None:
    """(one process, after every writer finished) Gather each split's checksums, store each utterance's teacher
    confidence, run `before_seal` (what else is computed from the finished splits: the LM N-best), then store the
    complete metadata and its integrity seal in one attribute write, so a complete cache is always sealed."""
    for split in splits:
        if not root[split].attrs.get("complete"):
            finalize_split(root[split])
    extra = extra_field_specs(root.attrs[META_KEY]["codecs"])
    fields = FieldTable(lp_codec, hidden_codecs, extra)
    for split in splits:          # the teacher's confidence in its 1-best, per utterance (cache/confidence.py)
        g = root[split]
        offsets = g["offset"][:].astype(np.int64)
        confidence.store(g, confidence.compute(g, fields, offsets))
        members = confidence.compute_members(g, offsets)       # an ensemble's: each member's, (U, N)
        if members is not None:
            confidence.store(g, members, confidence.MEMBERS)
    if before_seal is not None:
        before_seal()
    meta = CacheMeta.from_dict(dict(root.attrs[META_KEY])).completed_now().to_dict()
    seal = integrity.seal(root, meta, list(splits), fields.paths())
    root.attrs.update({META_KEY: meta, integrity.INTEGRITY_KEY: seal})
