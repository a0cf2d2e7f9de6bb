"""The dump (`offline-kd dump-teacher`): run the teacher once over the corpus into a Zarr v3 cache.

The dump plan (utterance order, batches, frame offsets) is a pure function of the corpus and the dump config, so
an interrupted dump resumes on exactly the same batches and the finished cache is byte-identical to an
uninterrupted one. Teacher inference overlaps encoding and writing, which run in a background thread.

Under torchrun (`torchrun --nproc_per_node N -m offline_kd dump-teacher ...`) rank 0 prepares the store, every rank
computes the batches that reach into its own contiguous block of shards and writes only those shards, and rank 0
finalises the metadata after every rank has finished. Progress is recorded per shard, so a rerun with any number of
processes resumes after whatever was stored, and the arrays equal those of a single-process dump.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from offline_kd import __version__
from offline_kd.cache import dev_figures
from offline_kd.cache.codecs import codec_from_spec, state_arrays
from offline_kd.cache.fields import LOG_PROBS, extra_field_specs, frame_field_specs, hidden_field
from offline_kd.cache.layout import META_KEY, open_group
from offline_kd.cache.meta import CacheMeta
from offline_kd.cache.plan import SplitPlan
from offline_kd.locking import cache_lock
from offline_kd.cache.store import finalize, needed_batches, prepare_store
from offline_kd.cache.reader import build_codecs
from offline_kd.cache.progress import shard_frame_count, shards_done
from offline_kd.cache.writer import DeviceEncoder, SplitWriter
from offline_kd.config import CodecConfig, DumpConfig, present_splits  # noqa: F401
from offline_kd.data.corpus import Corpus
from offline_kd.data.validate import output_frames
from offline_kd.data.views import ViewReader, parse_views, split_of, valid_in_views, view_name
from offline_kd.teachers import coverage
from offline_kd.teachers.source import check_frames, load_teacher, probe
from offline_kd.distillation.pseudo_labels import check_lm_loads, write_lm_targets
from offline_kd.errors import OfflineKDError, TeacherForwardError
from offline_kd.data.splits import open_split, quiet
from offline_kd.runtime import distributed
from offline_kd.models.checkpoint import weights_sha256
from offline_kd.teachers.ensemble import EnsembleTeacher, member_field_spec
from offline_kd.runtime.loaders import iterate_outputs, loader_for, resolve_num_workers, sorted_batches
from offline_kd.models.interface import reads_waveform
from offline_kd.models.numerics import with_precision


def codec_specs(c: CodecConfig, num_classes: int, layer_dims: dict[int, int], log=print) -> tuple[dict, dict]:
    """The stored specs of the codecs a dump config asks for (`CodecConfig.field_specs`, which also translates the
    deprecated flat keys), with the teacher's class count and layer widths filled in; ranks are capped at the
    field's width."""
    specs = c.field_specs(log)
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
    """Per cached split (a split of dump.view_splits is one per view: split@0, split@1, ...): validated utterances
    in dump order (longest first), batches, frame offsets."""
    plans = {}
    s = model.subsampling
    views = parse_views(cfg.views, "dump.views")
    for base_name in cfg.splits:
        base, valid = open_split(corpus, base_name, model, cfg.skip_invalid, log)
        base.verify_reads()          # every read (fit and dump, views included) checked against its stored hash
        if base_name not in cfg.view_splits:
            seen = [(base_name, base)]
        else:       # one cached split per view; an utterance too short for its transcript in any view is invalid
            seen = [(view_name(base_name, k), ViewReader(base, v, cfg.view_seed, k))
                    for k, v in enumerate(views)]
            valid = valid_in_views([r for _, r in seen], valid, corpus.vocab, model, cfg.skip_invalid, log)
        for split, reader in seen:
            plans[split] = _split_plan(reader, valid, cfg, s)
    return plans


def _split_plan(reader, valid, cfg: DumpConfig, s: int) -> SplitPlan:
    batches = sorted_batches(reader, valid, cfg.batch_size, cfg.max_frames_per_batch)
    order = [i for b in batches for i in b]
    out_frames = output_frames(reader.lengths[order], s)
    offsets = np.concatenate([[0], np.cumsum(out_frames)]).astype(np.int64)
    hashes = reader.all_feature_hashes()
    return SplitPlan(reader=reader, batches=batches, order=order, offsets=offsets,
                     hashes=[hashes[i] for i in order])


def _fit_state(model, vocab, plans, cfg, lp_codec, hidden_codecs, device, log,
               kept: dict | None = None, timing: dict | None = None) -> dict[str, np.ndarray]:
    """Fitted codec state, as {cache array path: array}, from the first `lowrank_fit_frames` frames of the first
    split, for every codec that needs one (`fit_required`). Empty when none does. The teacher's outputs on those
    batches go into `kept` ({plan position of a batch's first utterance: outputs}, every cached layer), so the
    split's dump writes them instead of running the teacher on them again. `timing["fit_seconds"]` gets the codecs'
    fitting time (k-means, PCA: a fixed cost, whatever the corpus's size), the teacher's pass not included."""
    fit_lp = lp_codec.fit_required
    layers = sorted(L for L, c in hidden_codecs.items() if c.fit_required)
    if not (fit_lp or layers):
        return {}
    first = next(iter(plans.values()))
    collected = {L: [] for L in layers}
    lps, n, limit = [], 0, cfg.codecs.lowrank_fit_frames
    loader = loader_for(first.reader, vocab, first.batches, device=device,
                        with_audio=reads_waveform(model))
    pos = 0
    for batch, log_probs, out_len, hidden in iterate_outputs(model, loader, device,
                                                             sorted(hidden_codecs) if kept is not None else layers,
                                                             first.reader.utterance_ids):
        if kept is not None:
            kept[pos] = (batch, log_probs, out_len, hidden)
            pos += len(out_len)
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
        raise OfflineKDError(f"dump.codecs: a fitted codec needs {needed} frames (a low-rank codec's rank, a codebook "
                             f"codec's entries), more than the {n} frames available to fit it; lower lowrank_rank / "
                             f"logits_rank / the codebook's entries or raise dump.codecs.lowrank_fit_frames")
    state, start = {}, time.perf_counter()
    if fit_lp:
        state.update(state_arrays(lp_codec.fit(np.concatenate(lps)[:limit]), LOG_PROBS))
    for L in layers:
        state.update(state_arrays(hidden_codecs[L].fit(np.concatenate(collected[L])[:limit]), hidden_field(L)))
    if timing is not None:
        timing["fit_seconds"] = time.perf_counter() - start
    log(f"fitting codec state ({', '.join(sorted({k.rsplit('/', 1)[0] for k in state}))}) on {min(n, limit)} "
        f"frames")
    return state


def run(cfg: DumpConfig, overwrite: bool = False, log=print) -> dict:
    """Dump the teacher; under torchrun every rank writes its own block of shards and rank 0 finalises."""
    env, device = distributed.setup(cfg.device)
    def locked():
        with cache_lock(cfg.output, env.is_main):       # one dump per cache (the ranks of this one excepted)
            return _run(cfg, overwrite, env, device, log if env.is_main else quiet)
    return distributed.run_then_shutdown(locked)


def _run(cfg: DumpConfig, overwrite: bool, env, device, log) -> dict:
    """plan -> fit -> prepare -> loop -> finalise."""
    corpus = Corpus(cfg.corpus)
    cfg = present_splits(cfg, corpus.split_names())
    teacher = load_teacher(cfg.teacher, device, corpus.vocab, subsampling=cfg.subsampling,
                           corpus=corpus)
    model, vocab = teacher.model, teacher.vocab
    if reads_waveform(model) and cfg.views:
        raise OfflineKDError("dump.views act on features; a teacher that reads waveforms cannot see them (leave "
                             "dump.views out)")
    model = with_precision(model, cfg.precision, device, "dump.precision")   # fp32: the model itself
    layers = _check(cfg, corpus, model, vocab, teacher.name)
    if cfg.lm_targets is not None:     # load the LM now: a file KenLM cannot read must cost no teacher pass
        distributed.run_on_main(lambda: check_lm_loads(vocab, cfg.lm_targets), env)
    lp_codec, hidden_codecs = make_codecs(cfg.codecs, model.num_classes,
                                          {L: model.layer_dims()[L] for L in layers}, log)
    plans = _plan(cfg, corpus, model, log)
    first_name = next(iter(plans))
    first = plans[first_name]
    for p in plans.values():
        check_frames(teacher, p.reader, p.order)                # every utterance's frame count reconciles
    probe(teacher, first.reader, first.order[0], layers, device)       # a wrong teacher fails before any write
    coverage = _coverage(cfg, corpus, teacher, plans, first, device, log)
    meta = CacheMeta.for_dump(cfg, model, vocab, str(corpus.dir), lp_codec, hidden_codecs, device.type,
                              teacher.record["sha256"], weights_sha256(model), __version__,
                              teacher.dev, splits=list(plans), frontend=corpus.meta.get("frontend"),
                              teacher_record=teacher.record, coverage=coverage,
                              extra_fields=_extra_fields(cfg, teacher.model)).with_identity(plans)
    kept, timing = {}, {"fit_seconds": 0.0}   # kept: the teacher's outputs on the fit sample's batches
    fit = lambda: _fit_state(model, vocab, plans, cfg, lp_codec, hidden_codecs, device, log, kept, timing)  # noqa
    state = distributed.run_on_main(lambda: prepare_store(cfg, meta, plans, fit, overwrite, log), env)
    if state["complete"]:
        log(f"{cfg.output}: already complete, nothing to do")
        return {"cache": cfg.output, "resumed": True, "frames_written": 0}
    root = open_group(cfg.output, "r+", cfg.storage_options)
    if root.attrs.get(META_KEY, {}).get("identity_sha256") != meta.identity_sha256:
        raise OfflineKDError(f"rank {env.rank}: {cfg.output} was prepared for another dump plan than this rank's "
                             f"(every rank must run the same command on the same corpus and teacher)")
    lp_codec, hidden_codecs = build_codecs(meta.codecs, root)      # with their fitted state
    totals = {"frames": 0, "utterances": 0, "seconds": 0.0}
    for split in plans:
        for k, v in _dump_split(cfg, root[split], plans[split], model, vocab, layers, lp_codec, hidden_codecs,
                                env, device, log, kept if split == first_name else None,
                                extra_field_specs(meta.codecs)).items():
            totals[k] += v
        kept = {}
    per_rank = distributed.all_gather(totals, env)    # also the barrier: every rank has finished writing
    seal = _before_seal(cfg, root, plans, vocab, str(corpus.dir), teacher.model, log)
    distributed.run_on_main(lambda: finalize(root, list(plans), lp_codec, hidden_codecs, before_seal=seal), env)
    out = {"cache": cfg.output, "resumed": state["resume"],
           "frames_written": sum(t["frames"] for t in per_rank),
           "utterances_written": sum(t["utterances"] for t in per_rank),
           "seconds": round(max(t["seconds"] for t in per_rank), 2),
           "fit_seconds": round(timing["fit_seconds"], 3)}     # (on the main rank; 0 where nothing was fitted)
    if env.enabled:
        out["world_size"] = env.world_size
    return out


def _coverage(cfg: DumpConfig, corpus: Corpus, teacher, plans: dict, first, device, log) -> dict | None:
    """A mapped teacher's coverage of the student (teachers/coverage.py), refused before anything is written where
    it would teach the wrong thing; -> what the cache's metadata records, None for a teacher used as it is. An
    ensemble's members are checked one by one."""
    if teacher.members:
        found = [_coverage(cfg, corpus, m, plans, first, device, log) for m in teacher.members]
        return {"members": found} if any(found) else None
    if "alignment" not in teacher.record:
        return None
    unreached = teacher.record["alignment"]["vocabulary"].get("unreached") or []
    found, total = coverage.unreached_in_transcripts(unreached, {s: p.reader for s, p in plans.items()},
                                                     teacher.vocab)
    coverage.check_unreached(found, total, str(corpus.dir), cfg.allow_unreached, log)
    dropped = coverage.dropped_mass(teacher, first.reader, first.order, device)
    coverage.check_dropped(dropped, cfg.max_dropped_mass, log)
    return {"unreached_in_transcripts": found, **({"dropped_mass": dropped} if dropped else {})}


def _before_seal(cfg: DumpConfig, root, plans: dict, vocab, corpus_dir: str, model, log):
    """What is computed from the finished splits before the seal: the cached dev figures, the LM N-best."""
    lm_splits = [s for s in plans if cfg.lm_targets and split_of(s)[0] in cfg.lm_targets.splits]

    def run():
        _cached_dev(root, plans, vocab, corpus_dir, model, log)
        if lm_splits:
            write_lm_targets(cfg.output, cfg.storage_options, lm_splits, vocab, cfg.lm_targets, log)
    return run


def _cached_dev(root, plans: dict, vocab, corpus_dir: str, model, log) -> None:
    """Store the greedy figures of the cached dev split's 1-best in the metadata (cache/dev_figures.py), and warn
    when they are clearly worse than the teacher's own (`dev_figures.warnings`)."""
    if dev_figures.SPLIT not in plans or not any(t.strip() for t in plans[dev_figures.SPLIT].reader.transcripts):
        return
    reader = plans[dev_figures.SPLIT].reader
    got = dev_figures.greedy_figures(root[dev_figures.SPLIT], vocab, dict(zip(reader.utterance_ids,
                                                                              reader.transcripts)))
    if got is None:
        return
    got.update({"split": dev_figures.SPLIT, "corpus": corpus_dir})
    meta = dict(root.attrs[META_KEY])
    meta["teacher"] = {**meta["teacher"], "cached_dev": got}
    root.attrs.update({META_KEY: meta})
    log(f"teacher greedy WER on the cached {dev_figures.SPLIT} split: {got['wer']:.2f}% (CER {got['cer']:.2f}%)")
    for line in dev_figures.warnings(meta["teacher"], got, isinstance(model, EnsembleTeacher)):
        log(line)


def _extra_fields(cfg: DumpConfig, model) -> list[dict]:
    """The further per-frame fields of the cache: those `dump.fields` names, and an ensemble's `member_probs`
    (`model`: the loaded teacher, before any precision wrapper)."""
    return frame_field_specs(cfg.fields) + ([member_field_spec(len(model.members))]
                                            if isinstance(model, EnsembleTeacher) else [])


def _check(cfg: DumpConfig, corpus: Corpus, model, vocab, name: str) -> list[int]:
    """One-line errors for a dump that cannot work; -> the teacher layers to cache, sorted."""
    if corpus.vocab.tokens != vocab.tokens:
        raise OfflineKDError(f"the vocabulary of {corpus.dir} differs from the teacher's ({name})")
    layers = sorted(int(L) for L in cfg.layers)
    have = model.layer_dims()
    bad = [L for L in layers if L not in have]
    if bad:
        raise OfflineKDError(f"dump.layers: {bad} out of range; the teacher has layers "
                             f"{', '.join(map(str, sorted(have)))}")
    if not cfg.splits:
        raise OfflineKDError("dump.splits: give at least one split")
    if cfg.lm_targets is not None and not Path(cfg.lm_targets.lm).is_file():
        raise OfflineKDError(f"dump.lm_targets.lm: language model file not found: {cfg.lm_targets.lm}")
    return layers


def _dump_split(cfg: DumpConfig, g, p: dict, model, vocab, layers, lp_codec, hidden_codecs, env, device,
                log, kept: dict | None = None, extra: list = ()) -> dict:
    """This rank's unfinished shards of one split: run the teacher over the batches that reach into them (those
    in `kept`, the fit sample's, it ran on already) and hand the outputs to the background writer (`extra`: the
    cache's further per-frame fields, as its metadata records them).
    -> {frames, utterances, seconds} written here."""
    reader, shard_frames = p.reader, cfg.chunk_frames * cfg.shard_chunks
    none = {"frames": 0, "utterances": 0, "seconds": 0.0}
    if g.attrs.get("complete"):
        log(f"{g.basename}: already complete")
        return none
    done = shards_done(g)
    blocks = np.array_split(np.arange(len(done)), env.world_size)
    mine = np.asarray([s for s in blocks[env.rank] if not done[s]], dtype=np.int64)
    if done.any():
        log(f"{g.basename}: resuming, {int(done.sum())} of {len(done)} shards already stored")
    if not len(mine):
        return none
    todo = needed_batches(p, mine, shard_frames)
    mine_frames = shard_frame_count(mine, shard_frames, int(p.offsets[-1]))
    bar = tqdm(total=sum(int(p.offsets[q + len(b)] - p.offsets[q]) for q, b in todo), unit="frame",
               unit_scale=True, desc=f"dump {g.basename}" + (f" rank {env.rank}" if env.enabled else ""),
               disable=not (cfg.progress and env.is_main), dynamic_ncols=True)
    start, n_utts = time.perf_counter(), 0
    # on any error the writer stops; the whole shards written so far stay flagged and a rerun resumes after them
    encoder = DeviceEncoder(lp_codec, hidden_codecs, device, extra) if (
        cfg.encode_on == "device" or cfg.encode_on == "auto" and device.type == "cuda") else None
    with bar, SplitWriter(g, lp_codec, hidden_codecs, shard_frames, mine.tolist(), cfg.writer_queue,
                          extra) as writer:
        workers = resolve_num_workers(cfg.num_workers, device, env.world_size)
        kept = kept or {}
        outputs_iter = iterate_outputs(model, loader_for(reader, vocab, [b for q, b in todo if q not in kept],
                                                         workers, device, reads_waveform(model)),
                                       device, layers, reader.utterance_ids)
        for pos, _ in todo:
            try:
                batch, log_probs, out_len, hidden = kept.pop(pos) if pos in kept else next(outputs_iter)
            except TeacherForwardError as exc:     # the shards stored so far stay: a rerun resumes after them
                raise TeacherForwardError(f"{exc}; the whole shards written so far are kept, and the same command "
                                          f"resumes after them") from None
            if encoder is not None:
                writer.put(encoder.encode(pos, log_probs, out_len, hidden))
            else:
                lp = log_probs.transpose(0, 1).float().cpu().numpy()
                best = lp.argmax(-1)
                hid = {L: h.float().cpu().numpy() for L, h in hidden.items()}
                writer.put([(pos + b, {"log_probs": lp[b, :t], "best_path": best[b, :t],
                                       "hidden": {L: h[b, :t] for L, h in hid.items()}})
                            for b, t in enumerate(out_len.tolist())])
            n_utts += len(out_len)
            bar.update(int(out_len.sum()))
            bar.set_postfix(utt_per_s=f"{n_utts / max(time.perf_counter() - start, 1e-9):.1f}")
    el = time.perf_counter() - start
    log(f"{g.basename}: {n_utts} utterances, {mine_frames} frames in {el:.1f}s"
        + (f" (rank 0 of {env.world_size})" if env.enabled else ""))
    return {"frames": mine_frames, "utterances": n_utts, "seconds": el}
