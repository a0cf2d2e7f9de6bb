"""`offline-kd dump-teacher`: run the teacher once over the corpus into a Zarr v3 cache.

The dump plan (utterance order, batches, frame offsets) is a pure function of the corpus and the dump config, so
an interrupted dump resumes on exactly the same batches and the finished cache is byte-identical to an
uninterrupted one. Teacher inference overlaps encoding and writing, which run in a background thread.

Under torchrun (`torchrun --nproc_per_node N -m offline_kd dump-teacher ...`) rank 0 prepares the store, every rank
computes the batches that reach into its own contiguous block of shards and writes only those shards, and rank 0
finalises the metadata after every rank has finished. Progress is recorded per shard, so a rerun with any number of
processes resumes after whatever was stored, and the arrays equal those of a single-process dump.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from offline_kd import __version__
from offline_kd.cache import integrity
from offline_kd.cache.codecs import codec_from_spec, state_arrays
from offline_kd.cache.layout import FORMAT_VERSION, META_KEY, field_arrays, open_group
from offline_kd.cache.reader import build_codecs
from offline_kd.cache.writer import SplitWriter, create_split, finalize_split, shard_frame_count, shards_done
from offline_kd.config import CodecConfig, DumpConfig
from offline_kd.data.corpus import Corpus, feature_sha256
from offline_kd.data.validate import output_frames
from offline_kd.errors import OfflineKDError
from offline_kd.commands.common import open_split, quiet
from offline_kd.training import distributed
from offline_kd.training.checkpoint import file_sha256, model_from_checkpoint, weights_sha256
from offline_kd.training.inference import iterate_outputs, loader_for, sorted_batches


FLAT_KEYS = {"log_probs": ("topk_k", "topk_coverage", "topk_tail", "logits_rank", "logits_coeff", "sampled_n"),
             "hidden": ("lowrank_rank", "lowrank_coeff", "lowrank_target_error")}


def _flat_spec(c: CodecConfig, field: str) -> dict:
    """The spec that the older flat keys describe."""
    if field == "log_probs":
        spec = {"name": c.log_probs}
        if c.log_probs == "topk":
            spec.update(k=c.topk_k, coverage=c.topk_coverage, tail=c.topk_tail)
            if c.topk_tail == "lowrank":
                spec.update(tail_rank=c.logits_rank, tail_coeff=c.logits_coeff)
        elif c.log_probs == "sampled":
            spec.update(samples=c.sampled_n)
        elif c.log_probs == "lowrank":
            spec.update(rank=c.logits_rank, coeff=c.logits_coeff)
        return spec
    spec = {"name": c.hidden}
    if c.hidden == "lowrank":
        spec.update(rank=c.lowrank_rank, coeff=c.lowrank_coeff, target_error=c.lowrank_target_error)
    return spec


def codec_specs(c: CodecConfig, num_classes: int, layer_dims: dict[int, int], log=print) -> tuple[dict, dict]:
    """The stored specs of the codecs a dump config asks for: `codecs.log_probs` / `codecs.hidden` are specs
    (a name or a mapping of settings); the older flat keys still work, with a deprecation message. Ranks are capped
    at the field's width."""
    defaults = CodecConfig()
    specs = {}
    for field in ("log_probs", "hidden"):
        value = getattr(c, field)
        flat = [k for k in FLAT_KEYS[field] if getattr(c, k) != getattr(defaults, k)]
        if isinstance(value, dict):
            if flat:
                raise OfflineKDError(f"dump.codecs.{field} is a mapping, so give its settings there, not in "
                                     f"{', '.join('dump.codecs.' + k for k in flat)}")
            if "name" not in value:
                raise OfflineKDError(f"dump.codecs.{field}: the mapping needs a 'name' (e.g. {{name: topk, k: 8}})")
            specs[field] = dict(value)
        else:
            specs[field] = _flat_spec(c, field)
            if flat:
                shown = ", ".join(f"{k}: {v}" for k, v in specs[field].items())
                log(f"warning: dump.codecs flat keys ({', '.join(flat)}) are deprecated; write "
                    f"codecs.{field}: {{{shown}}}")
    for key in ("num_classes", "dim"):
        for field in ("log_probs", "hidden"):
            if key in specs[field]:
                raise OfflineKDError(f"dump.codecs.{field}.{key} is taken from the teacher; leave it out")
    lp = {**specs["log_probs"], "num_classes": num_classes}
    for key in ("rank", "tail_rank"):
        if isinstance(lp.get(key), int):
            lp[key] = min(lp[key], num_classes)
    hidden = {}
    for layer, dim in layer_dims.items():
        h = {**specs["hidden"], "dim": dim}
        if isinstance(h.get("rank"), int):
            h["rank"] = min(h["rank"], dim)
        hidden[layer] = h
    return lp, hidden


def make_codecs(c: CodecConfig, num_classes: int, layer_dims: dict[int, int], log=print):
    lp_spec, hidden_specs = codec_specs(c, num_classes, layer_dims, log)
    return (codec_from_spec("log_probs", lp_spec, "dump.codecs.log_probs"),
            {L: codec_from_spec("hidden", s, "dump.codecs.hidden") for L, s in hidden_specs.items()})


def _plan(cfg: DumpConfig, corpus: Corpus, model, log):
    """Per split: validated utterances in dump order (longest first), batches, frame offsets."""
    plans = {}
    s = model.config.subsampling
    for split in cfg.splits:
        reader, valid = open_split(corpus, split, model.config, cfg.skip_invalid, log)
        batches = sorted_batches(reader, valid, cfg.batch_size, cfg.max_frames_per_batch)
        order = [i for b in batches for i in b]
        out_frames = output_frames(reader.lengths[order], s)
        offsets = np.concatenate([[0], np.cumsum(out_frames)]).astype(np.int64)
        hashes = reader.feature_hashes or [reader.compute_feature_hash(i) for i in range(len(reader))]
        plans[split] = {"reader": reader, "batches": batches, "order": order, "offsets": offsets,
                        "hashes": [hashes[i] for i in order]}
    return plans


def _identity(meta: dict, plans: dict) -> str:
    """What must match for a rerun to resume rather than start over: teacher, vocabulary, data, settings."""
    h = hashlib.sha256()
    d = meta["dump_config"]
    keys = {k: d[k] for k in ("layers", "batch_size", "max_frames_per_batch", "chunk_frames", "shard_chunks",
                               "skip_invalid", "codecs", "splits")}
    h.update(json.dumps([meta["teacher"]["weights_sha256"], meta["vocab_sha256"], meta["device_type"], keys],
                        sort_keys=True).encode())
    for split, p in plans.items():
        h.update(split.encode())
        for u, fh in zip((p["reader"].utterance_ids[i] for i in p["order"]), p["hashes"]):
            h.update(f"{u}:{fh}".encode())
    return h.hexdigest()


def _fit_state(model, vocab, plans, cfg, lp_codec, hidden_codecs, device, log) -> dict[str, np.ndarray]:
    """Fitted codec state, as {cache array path: array}, from the first `lowrank_fit_frames` frames of the first
    split, for every codec that needs one (`fit_required`). Empty when none does."""
    fit_lp = lp_codec.fit_required
    layers = sorted(L for L, c in hidden_codecs.items() if c.fit_required)
    if not (fit_lp or layers):
        return {}
    first = plans[cfg.splits[0]]
    collected = {L: [] for L in layers}
    lps, n, limit = [], 0, cfg.codecs.lowrank_fit_frames
    loader = loader_for(first["reader"], vocab, first["batches"])
    for batch, log_probs, out_len, hidden in iterate_outputs(model, loader, device, layers):
        lp = log_probs.transpose(0, 1).float().cpu().numpy()
        for b, t in enumerate(out_len.tolist()):
            for L in layers:
                collected[L].append(hidden[L][b, :t].float().cpu().numpy())
            if fit_lp:
                lps.append(lp[b, :t])
            n += t
        if n >= limit:
            break
    needed = max([lp_codec.fit_frames_needed if fit_lp else 0] + [hidden_codecs[L].fit_frames_needed for L in layers])
    if n < needed:
        raise OfflineKDError(f"dump.codecs: a low-rank codec asks for rank {needed}, more than the {n} frames "
                             f"available to fit its basis; lower lowrank_rank / logits_rank or raise "
                             f"dump.codecs.lowrank_fit_frames")
    state = {}
    if fit_lp:
        state.update(state_arrays(lp_codec.fit(np.concatenate(lps)[:limit]), "log_probs"))
    for L in layers:
        state.update(state_arrays(hidden_codecs[L].fit(np.concatenate(collected[L])[:limit]), f"hidden_{L}"))
    log(f"fitting codec state ({', '.join(sorted({k.rsplit('/', 1)[0] for k in state}))}) on {min(n, limit)} "
        f"frames")
    return state


def _refuse_foreign_directory(output: str, overwrite: bool) -> None:
    """A local directory that holds files but no offline-kd cache is never replaced, even with --overwrite
    (`--set dump.output=data/demo` must not wipe a corpus)."""
    if "://" in output:
        return
    p = Path(output)
    if p.is_dir() and any(p.iterdir()):
        meta = p / "zarr.json"
        node = json.loads(meta.read_text() or "{}") if meta.is_file() else {}
        if [e.name for e in p.iterdir()] == ["zarr.json"] and node.get("node_type") == "group" \
                and not node.get("attributes"):
            return                       # an empty group: what a dump that failed before writing anything leaves
        if not meta.is_file() or META_KEY not in node.get("attributes", {}):
            raise OfflineKDError(f"{output} is a non-empty directory that is not an offline-kd cache; "
                                 f"choose another dump.output (it is never replaced, not even with --overwrite)")


def _prepare_store(cfg: DumpConfig, meta: dict, plans: dict, model, vocab, lp_codec, hidden_codecs, device,
                   overwrite: bool, log) -> dict:
    """(rank 0 only) Open, check or (re)create the cache and every split's arrays before any rank writes."""
    _refuse_foreign_directory(cfg.output, overwrite)
    root = open_group(cfg.output, "a", cfg.storage_options)
    old = root.attrs.get(META_KEY)
    resume = False
    if isinstance(old, dict):
        if old.get("identity_sha256") == meta["identity_sha256"] and not overwrite:
            resume = True
            if old.get("complete"):
                return {"resume": True, "complete": True}
        elif not overwrite:
            raise OfflineKDError(
                f"{cfg.output} holds a cache from another teacher, corpus or dump config "
                f"(teacher {old.get('teacher', {}).get('sha256', '?')[:12]}, created {old.get('created', '?')}); "
                f"use --overwrite to replace it or choose another dump.output")
    elif len(list(root.keys())) and not overwrite:
        raise OfflineKDError(f"{cfg.output} exists and is not an offline-kd cache; use --overwrite or another path")
    if not resume:
        # fit before anything is replaced: a fit that fails must not have wiped the old cache
        fitted = _fit_state(model, vocab, plans, cfg, lp_codec, hidden_codecs, device, log)
        root = open_group(cfg.output, "w", cfg.storage_options)
        for path, arr in fitted.items():
            a = root.create_array(path, shape=arr.shape, dtype="float32", chunks=arr.shape)
            a[:] = arr
        root.attrs.update({META_KEY: meta})
    codecs = build_codecs(root.attrs[META_KEY], root)     # with any fitted state stored above
    fields = field_arrays(codecs[0], codecs[1])
    for split in cfg.splits:
        if resume and split in root and root[split].attrs.get("created"):
            continue                               # (a split killed while being created is made again)
        p = plans[split]
        reader = p["reader"]
        create_split(root, split, [reader.utterance_ids[i] for i in p["order"]], p["offsets"],
                     reader.lengths[p["order"]], p["hashes"], fields, cfg.chunk_frames, cfg.shard_chunks,
                     cfg.codecs.compressor, cfg.codecs.level)
    return {"resume": resume, "complete": False}


def _needed_batches(p: dict, mine: np.ndarray, shard_frames: int) -> list[tuple[int, list[int]]]:
    """(plan position of the first utterance, batch) for every batch whose frames reach into a shard in `mine`."""
    offsets, starts = p["offsets"], np.cumsum([0] + [len(b) for b in p["batches"]])
    wanted = np.zeros(int(-(-offsets[-1] // shard_frames)) + 1, dtype=np.int64)
    wanted[mine] = 1
    cum = np.concatenate([[0], np.cumsum(wanted)])
    out = []
    for bi, batch in enumerate(p["batches"]):
        lo, hi = int(offsets[starts[bi]]), int(offsets[starts[bi + 1]])
        if hi > lo and cum[(hi - 1) // shard_frames + 1] - cum[lo // shard_frames] > 0:
            out.append((int(starts[bi]), batch))
    return out


def run(cfg: DumpConfig, overwrite: bool = False, log=print) -> dict:
    """Dump the teacher; under torchrun every rank writes its own block of shards and rank 0 finalises."""
    env, device = distributed.setup(cfg.device)
    try:
        return _run(cfg, overwrite, env, device, log if env.is_main else quiet)
    finally:
        distributed.shutdown()


def _run(cfg: DumpConfig, overwrite: bool, env, device, log) -> dict:
    model, vocab, _ = model_from_checkpoint(cfg.teacher, device)
    corpus = Corpus(cfg.corpus)
    if corpus.vocab.tokens != vocab.tokens:
        raise OfflineKDError(f"the vocabulary of {corpus.dir} differs from the teacher's ({cfg.teacher})")
    layers = sorted(int(L) for L in cfg.layers)
    bad = [L for L in layers if not 1 <= L <= model.config.num_layers]
    if bad:
        raise OfflineKDError(f"dump.layers: {bad} out of range; the teacher has layers 1..{model.config.num_layers}")
    if not cfg.splits:
        raise OfflineKDError("dump.splits: give at least one split")
    layer_dims = {L: model.hidden_size for L in layers}
    lp_codec, hidden_codecs = make_codecs(cfg.codecs, model.config.num_classes, layer_dims, log)
    plans = _plan(cfg, corpus, model, log)

    meta = {
        "format_version": FORMAT_VERSION, "tool_version": __version__, "complete": False,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "teacher": {"path": str(cfg.teacher), "sha256": file_sha256(cfg.teacher),
                    "weights_sha256": weights_sha256(model), "model_config": asdict(model.config)},
        "vocab": vocab.to_dict(), "vocab_sha256": vocab.sha256, "corpus": str(corpus.dir),
        "subsampling": model.config.subsampling, "num_classes": model.config.num_classes,
        "layers": {str(L): d for L, d in layer_dims.items()},
        "codecs": {"log_probs": lp_codec.to_dict(), "hidden": {str(L): c.to_dict() for L, c in hidden_codecs.items()},
                   "compressor": cfg.codecs.compressor, "level": cfg.codecs.level},
        "chunk_frames": cfg.chunk_frames, "shard_frames": cfg.chunk_frames * cfg.shard_chunks,
        "splits": list(cfg.splits), "device_type": device.type,
        # the resolved config, without storage options (they may hold credentials)
        "dump_config": {k: v for k, v in asdict(cfg).items() if k != "storage_options"},
    }
    meta["identity_sha256"] = _identity(meta, plans)

    state = distributed.run_on_main(lambda: _prepare_store(cfg, meta, plans, model, vocab, lp_codec, hidden_codecs,
                                                           device, overwrite, log), env)
    if state["complete"]:
        log(f"{cfg.output}: already complete, nothing to do")
        return {"cache": cfg.output, "resumed": True, "frames_written": 0}
    root = open_group(cfg.output, "r+", cfg.storage_options)
    stored = root.attrs.get(META_KEY, {})
    if stored.get("identity_sha256") != meta["identity_sha256"]:
        raise OfflineKDError(f"rank {env.rank}: {cfg.output} was prepared for another dump plan than this rank's "
                             f"(every rank must run the same command on the same corpus and teacher)")
    lp_codec, hidden_codecs = build_codecs(root.attrs[META_KEY], root)
    shard_frames = cfg.chunk_frames * cfg.shard_chunks

    totals = {"frames": 0, "utterances": 0, "seconds": 0.0}
    for split in cfg.splits:
        p = plans[split]
        reader = p["reader"]
        g = root[split]
        if g.attrs.get("complete"):
            log(f"{split}: already complete")
            continue
        done = shards_done(g)
        blocks = np.array_split(np.arange(len(done)), env.world_size)
        mine = np.asarray([s for s in blocks[env.rank] if not done[s]], dtype=np.int64)
        if done.any():
            log(f"{split}: resuming, {int(done.sum())} of {len(done)} shards already stored")
        if not len(mine):
            continue
        todo = _needed_batches(p, mine, shard_frames)
        total = int(p["offsets"][-1])
        mine_frames = shard_frame_count(mine, shard_frames, total)
        writer = SplitWriter(g, lp_codec, hidden_codecs, shard_frames, mine.tolist(), cfg.writer_queue)
        bar = tqdm(total=sum(int(p["offsets"][q + len(b)] - p["offsets"][q]) for q, b in todo), unit="frame",
                   unit_scale=True, desc=f"dump {split}" + (f" rank {env.rank}" if env.enabled else ""),
                   disable=not (cfg.progress and env.is_main), dynamic_ncols=True)
        start = time.perf_counter()
        n_utts = 0
        try:
            loader = loader_for(reader, vocab, [b for _, b in todo])
            outputs_iter = iterate_outputs(model, loader, device, layers)
            for (pos, _), (batch, log_probs, out_len, hidden) in zip(todo, outputs_iter):
                for b, i in enumerate(batch["indices"]):
                    if p["hashes"][pos + b] != feature_sha256(batch["features"][b, :reader.lengths[i]].numpy()):
                        raise OfflineKDError(f"utterance {reader.utterance_ids[i]}: features changed since the "
                                             f"corpus was written (feature_sha256 mismatch)")
                lp = log_probs.transpose(0, 1).float().cpu().numpy()
                best = lp.argmax(-1)
                hid = {L: h.float().cpu().numpy() for L, h in hidden.items()}
                outputs = []
                for b, t in enumerate(out_len.tolist()):
                    outputs.append((pos + b, {"log_probs": lp[b, :t], "best_path": best[b, :t],
                                              "hidden": {L: h[b, :t] for L, h in hid.items()}}))
                writer.put(outputs)
                n_utts += len(outputs)
                bar.update(int(out_len.sum()))
                bar.set_postfix(utt_per_s=f"{n_utts / max(time.perf_counter() - start, 1e-9):.1f}")
            writer.close()
        except BaseException:
            bar.close()
            writer.abort()   # the whole shards written so far stay flagged: a rerun resumes after them
            raise
        bar.close()
        el = time.perf_counter() - start
        totals["frames"] += mine_frames
        totals["utterances"] += n_utts
        totals["seconds"] += el
        log(f"{split}: {n_utts} utterances, {mine_frames} frames in {el:.1f}s"
            + (f" (rank 0 of {env.world_size})" if env.enabled else ""))
    per_rank = distributed.all_gather(totals, env)    # also the barrier: every rank has finished writing

    def finalize():
        for split in cfg.splits:
            g = root[split]
            if not g.attrs.get("complete"):
                finalize_split(g)
        meta_done = dict(root.attrs[META_KEY])
        meta_done["complete"] = True
        meta_done["completed"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        seal = integrity.seal(root, meta_done, list(cfg.splits), [p for p, *_ in field_arrays(lp_codec, hidden_codecs)])
        root.attrs.update({META_KEY: meta_done, integrity.INTEGRITY_KEY: seal})
    distributed.run_on_main(finalize, env)
    out = {"cache": cfg.output, "resumed": state["resume"],
           "frames_written": sum(t["frames"] for t in per_rank),
           "utterances_written": sum(t["utterances"] for t in per_rank),
           "seconds": round(max(t["seconds"] for t in per_rank), 2)}
    if env.enabled:
        out["world_size"] = env.world_size
    return out
