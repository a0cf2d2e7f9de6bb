"""A student distilled from the teacher cache (`offline-kd train-student`) with the hybrid loss.

The teacher checkpoint is never read (unless `--online-teacher` asks for live targets, for comparison). Before any
training the cache is checked against the corpus and the student: complete, same vocabulary, same subsampling,
every training utterance present with the same feature hash and frame count, every mapped teacher layer cached.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from offline_kd.distillation.compat import check_cache
from offline_kd.cache.reader import TargetDecoder, TeacherCache
from offline_kd.config import AUTO_LM_LABELS, LM_LABELS, VIEWS_EXCLUDE_MASKS, ExperimentConfig, ModelConfig, build_dataclass
from offline_kd.data.distill_dataset import DistillBatchDataset
from offline_kd.data.sampler import SortedRunBatchSampler
from offline_kd.data.views import (ByView, ViewBatchSampler, ViewReader, max_view_lengths, parse_views,
                                   split_of, valid_in_views, view_name)
from offline_kd.errors import OfflineKDError, arg
from offline_kd.losses.modules import StudentLoss
from offline_kd.models.augment import SpecAugment
from offline_kd.models.augment import refuse_feature_augment
from offline_kd.models.interface import (build_model, check_waveform_frames, count_parameters, describe_model,
                                        reads_waveform)
from offline_kd.data.splits import open_split, open_train_dev, train_splits
from offline_kd.models.checkpoint import (checkpoint_dev, load_checkpoint, model_from_checkpoint, seed_everything,
                                         weights_sha256)
from offline_kd.teachers.source import check_frames, load_teacher
from offline_kd.training.trainer import Trainer, inference_meta


@dataclass
class StudentRun:
    """Everything a train-student run trains with, assembled and checked (`build_student_run`): the student, its
    loss (`StudentLoss`), the batch dataset and sampler over the cached targets, the dev split, and what the
    checkpoints record. `fit(run)` trains it; another trainer can take the pieces."""
    cfg: ExperimentConfig
    model: nn.Module
    loss: StudentLoss
    dataset: object                  # DistillBatchDataset (or ByView of them): whole batches by index lists
    sampler: object                  # yields each epoch's batches of dataset indices (`set_epoch(e)` first)
    lengths: np.ndarray              # input frames of every dataset index
    indices: np.ndarray              # the dataset indices trained on
    vocab: object
    dev_reader: object
    dev_indices: Optional[np.ndarray]
    meta: dict                       # what checkpoints record beside the model (front end, cache identity, heads)
    reference: Optional[dict]        # the teacher's dev figures printed beside the student's
    env: object
    device: torch.device

    def batch_ids(self, epoch: int = 1) -> list[list[str]]:
        """The utterance ids of each batch of `epoch`, in training order (this rank's)."""
        self.sampler.set_epoch(epoch)
        ids = [u for p in _first(self.dataset).parts for u in p.reader.utterance_ids]
        return [[ids[int(i)] for i in (b[1] if isinstance(b, tuple) else b)] for b in self.sampler]


def _first(dataset):
    return dataset.datasets[0] if hasattr(dataset, "datasets") else dataset


@dataclass
class _Targets:
    """Where the targets come from: a live teacher (`--online-teacher`) or the cache."""
    teacher: Optional[nn.Module]
    cache: Optional[TeacherCache]
    dims: dict
    dev: Optional[dict]


def train_student(cfg: ExperimentConfig, resume: bool, online_teacher: str | None, env, device, log) -> dict:
    """One process's part of a train-student run (under torchrun: this rank's)."""
    return fit(build_student_run(cfg, env, device, log, online_teacher=online_teacher, resume=resume), resume)


def fit(run: StudentRun, resume: bool = False) -> dict:
    """Train `run` with offline-kd's Trainer in train.output_dir -> {output_dir, best_dev_wer}."""
    cfg = run.cfg
    trainer = Trainer(cfg, run.model, run.vocab, run.dataset, run.lengths, run.indices, run.dev_reader,
                      run.dev_indices, run.loss, run.device, extra_meta=run.meta, sampler=run.sampler,
                      rank=run.env.rank, world_size=run.env.world_size, dev_reference=run.reference)
    trainer.fit(resume=resume)
    return {"output_dir": cfg.train.output_dir, "best_dev_wer": trainer.best_wer}


def build_student_run(cfg: ExperimentConfig, env, device, log=print, online_teacher: str | None = None,
                      resume: bool = False) -> StudentRun:
    """The cache checked against the corpus and the student, the views and untranscribed splits resolved, the
    targets assembled: a `StudentRun` ready to `fit`."""
    d = cfg.distill
    augment = SpecAugment(cfg.augment, allow_frame_change=False)
    corpus, (train_reader, train_idx), (dev_reader, dev_idx) = open_train_dev(cfg.data, cfg.model, log)
    mapping = {int(s): int(t) for s, t in d.layer_mapping.items()} if d.gamma else {}
    extra = _open_untranscribed(cfg, corpus, log)   # [(name, reader, valid indices)]
    src = _targets_source(cfg, online_teacher, corpus, augment, mapping, [(train_reader, train_idx)] +
                          [(r, i) for _, r, i in extra], device, log)
    names = [train_splits(cfg.data)[0]] + [name for name, _, _ in extra]
    bases = [(train_reader, train_idx)] + [(r, idx) for _, r, idx in extra]
    views, view_seed, viewed, seen, valids, splits = _seen_splits(cfg, src.cache, names, bases, corpus, augment,
                                                                  mapping, log)
    if d.pseudo_labels == "auto":     # the LM's labels where the cache has them: the run's config records which
        cached = [s for sp in splits for s in sp[1:]]
        chosen = auto_pseudo_labels(cached, online_teacher)
        lacking = next((s.name for s in cached if s is not None and not s.has_lm_nbest), None)
        log(f"distill.pseudo_labels auto: {chosen} (" + (
            "the cache holds an LM N-best of the untranscribed audio)" if chosen != "greedy" else
            "no untranscribed audio)" if not cached else "a live teacher)" if online_teacher else
            f"split '{lacking}' of the cache has no LM N-best: dump.lm_targets stores one)"))
        cfg = replace(cfg, distill=replace(d, pseudo_labels=chosen))
        d = cfg.distill
    if d.pseudo_labels in LM_LABELS:
        _check_lm_pseudo_labels(cfg, online_teacher, [sp[1:] for sp in splits], names[1:])
    reference = _teacher_reference(src.dev, cfg, log)
    model = _student_model(cfg, device)
    refuse_feature_augment(model, cfg)
    check_waveform_frames(model, corpus.meta.get("frontend"))
    if reads_waveform(model) and views:
        raise OfflineKDError(f"distill.cache {d.cache}: its views act on features; model.type {cfg.model.type} reads "
                             f"waveforms: train it from a cache without views")
    on_device = not online_teacher and (d.decode_on == "device" or d.decode_on == "auto" and device.type == "cuda")
    quantizers = (_codebooks(d, src.cache, src.dims, mapping, log, src.teacher) if d.feature_loss == "codebook"
                  else None)
    loss_fn = StudentLoss(d, model.layer_dims(), src.dims, augment, device, src.teacher,
                          decoder=TargetDecoder(src.cache) if on_device else None, quantizers=quantizers)
    log(f"student: {describe_model(model)}, {count_parameters(model):,} parameters "
        f"(+{count_parameters(loss_fn.projections):,} in projection heads, not exported); layer mapping {mapping}")
    datasets = [DistillBatchDataset(parts[0][0], corpus.vocab, sp[0], layers=set(mapping.values()),
                                    untranscribed=[(r, es) for (r, _), es in zip(parts[1:], sp[1:])],
                                    encoded=on_device, lm_nbest=d.pseudo_labels in LM_LABELS,
                                    with_audio=reads_waveform(model) or src.teacher is not None and reads_waveform(src.teacher))
                for parts, sp in zip(seen, splits)]
    if not online_teacher:
        log(f"cached targets decoded on {device if on_device else 'the host'} (distill.decode_on {d.decode_on})")
    lengths, indices, sampler = _sampler(cfg, env, datasets, views, bases, valids, names, log)
    meta = {**inference_meta(corpus), "distillation": {
        "cache": None if online_teacher else d.cache, "online_teacher": online_teacher,
        "cache_identity": None if online_teacher else src.cache.meta.identity_sha256,
        "projections": {"layer_mapping": mapping, "teacher_dims": src.dims, "feature_loss": d.feature_loss},
        "views": {"views": [v.to_dict() for v in views], "splits": viewed, "seed": view_seed}}}
    if resume:
        _check_resume(cfg, meta["distillation"], online_teacher)
    return StudentRun(cfg, model, loss_fn, datasets[0] if not views else ByView(datasets), sampler, lengths,
                      indices, corpus.vocab, dev_reader, dev_idx, meta, reference, env, device)


def _targets_source(cfg, online_teacher, corpus, augment, mapping, parts, device, log) -> _Targets:
    """The live teacher of --online-teacher, checked against the corpus and the student, or the cache (its seal
    checked at open; the corpus features read against their hashes with distill.verify_reads)."""
    d = cfg.distill
    if not online_teacher:
        cache = TeacherCache(d.cache, d.storage_options, verify_reads=d.verify_reads)
        if d.verify_reads:      # features read against their hashes, as the targets are against their checksums
            for reader, _ in parts:
                reader.verify_reads()
        return _Targets(None, cache, cache.layer_dims, cache.meta.teacher_dev)
    loaded = load_teacher(online_teacher, device, corpus.vocab, where=arg("online_teacher"),
                          subsampling=cfg.model.subsampling, corpus=corpus)
    if loaded.input_kind == "waveform" and (d.views or augment.active):
        raise OfflineKDError(f"{arg('online_teacher')}: this teacher reads waveforms and cannot see the student's views "
                             "or SpecAugment masks (they act on features); leave distill.views and the "
                             "augment masks out")
    for reader, idx in parts:
        check_frames(loaded, reader, idx)         # a waveform teacher: every utterance kept and reconcilable
    if loaded.vocab.sha256 != corpus.vocab.sha256:
        raise OfflineKDError(f"{arg('online_teacher')} {loaded.name}: vocabulary differs from {corpus.dir}'s")
    dims = loaded.model.layer_dims()
    for t in mapping.values():
        if t not in dims:
            raise OfflineKDError(f"distill.layer_mapping: teacher layer {t} is not one of the teacher's layers "
                                 f"({', '.join(map(str, sorted(dims)))}); map the student's layers "
                                 f"onto those, or set distill.gamma=0 (no feature term)")
    log(f"online distillation from {loaded.name} (the cache is not used)")
    return _Targets(loaded.model, None, dims, loaded.dev)


def _seen_splits(cfg, cache, names, bases, corpus, augment, mapping, log):
    """Per view (or once, without views): the training split and the untranscribed ones as the student sees them,
    with the cached split of that view, checked against the cache; an utterance must be valid in every view, and
    with distill.min_confidence confident enough. -> (views, view seed, viewed splits, seen [view][part] ->
    (reader, cached split name), valid indices per part, cached splits [view][part])."""
    d = cfg.distill
    views, view_seed, viewed = _views(cfg, cache, names[1:], log)
    if views and augment.active:
        raise OfflineKDError(VIEWS_EXCLUDE_MASKS)
    seen = []
    for k in (range(len(views)) if views else [None]):
        seen.append([(ViewReader(r, views[k], view_seed, k) if k is not None and n in viewed else r,
                      view_name(n, k) if k is not None and n in viewed else n) for n, (r, _) in zip(names, bases)])
    valids = [valid_in_views([seen[k][j][0] for k in range(len(seen))], idx, corpus.vocab, cfg.model,
                             cfg.data.skip_invalid, log) if views else idx for j, (_, idx) in enumerate(bases)]
    splits = [[None] * len(names) for _ in seen]
    if cache is not None:
        for k, parts in enumerate(seen):
            for j, (reader, name) in enumerate(parts):
                splits[k][j] = cache.split(name)
                check_cache(cache, splits[k][j], reader, valids[j], corpus.vocab, cfg.model, mapping)
        split = splits[0][0]
        log(f"cache {d.cache}: {len(split)} utterances, {split.num_frames} frames, "
            f"log_probs {cache.meta.codec_names()[0]}, hidden {cache.meta.codec_names()[1]}"
            + (f"; {len(views)} views of {', '.join(viewed)}" if views else ""))
        for j in range(1, len(names)):
            _report_confidence(splits[0][j], seen[0][j][0], valids[j], names[j], d, log)
    if d.min_confidence is not None:
        valids = valids[:1] + [_confident(d.min_confidence, [sp[j] for sp in splits], seen[0][j][0], names[j], v,
                                          cache is None, log) for j, v in enumerate(valids) if j >= 1]
    return views, view_seed, viewed, seen, valids, splits


def _student_model(cfg: ExperimentConfig, device) -> nn.Module:
    """The student, seeded with train.seed (or distill.init_checkpoint's weights)."""
    d = cfg.distill
    seed_everything(cfg.train.seed)
    model = build_model(cfg.model).to(device)
    if d.init_checkpoint:
        init, _, _ = model_from_checkpoint(d.init_checkpoint)       # its weights checked against its own config
        # compared as built: a type's defaults and an hf student's resolved transformers config filled in
        mine = build_dataclass(ModelConfig, {**model.describe(), "type": model.model_type})
        theirs = build_dataclass(ModelConfig, {**init.describe(), "type": init.model_type})
        if mine != theirs:
            raise OfflineKDError(f"distill.init_checkpoint {d.init_checkpoint}: its model config differs from 'model'")
        model.load_state_dict(init.state_dict())
    return model


def _sampler(cfg, env, datasets, views, bases, valids, names, log):
    """-> (input frames per dataset index, the indices trained on, the batch sampler): transcribed utterances
    and, each epoch, distill.untranscribed_fraction of the untranscribed ones, in sorted runs of the cache."""
    d = cfg.distill
    train_idx, extra = valids[0], valids[1:]
    lengths = datasets[0].lengths if not views else max_view_lengths(
        np.concatenate([r.lengths for r, _ in bases]), views)
    indices = np.concatenate([train_idx] + [off + idx for off, idx in zip(datasets[0].part_offsets[1:], extra)])
    sampled = np.arange(len(indices)) >= len(train_idx)
    sampler = SortedRunBatchSampler(lengths, indices, cfg.data.batch_size,
                                    cfg.data.max_frames_per_batch, seed=cfg.train.seed, rank=env.rank,
                                    world_size=env.world_size, sampled=sampled,
                                    sampled_fraction=d.untranscribed_fraction)
    if views:     # every batch is seen through one view, drawn from (seed, epoch, batch)
        sampler = ViewBatchSampler(sampler, len(views), cfg.train.seed)
    if extra:
        n_extra = int(round(d.untranscribed_fraction * int(sampled.sum())))
        log(f"untranscribed: {', '.join(names[1:])}, {int(sampled.sum())} utterances; "
            f"{n_extra} per epoch beside {len(train_idx)} transcribed ones, trained on the teacher's "
            + {"lm": "LM N-best", "lm_1best": "LM 1-best"}.get(d.pseudo_labels, "greedy 1-best"))
    return lengths, indices, sampler


def _check_resume(cfg: ExperimentConfig, now: dict, online_teacher) -> None:
    """A resumed run's checkpoint must come from the same cache (identity), feature loss and views."""
    last = Path(cfg.train.output_dir) / "checkpoint_last.pt"
    if not last.is_file():
        return
    before = load_checkpoint(last).get("distillation", {})
    if before.get("cache_identity") != now["cache_identity"]:
        raise OfflineKDError(f"{arg('resume')}: {last} was trained from another cache or teacher than "
                             f"{arg('online_teacher') if online_teacher else cfg.distill.cache} (identity differs); "
                             f"start a new run instead")
    was = before.get("projections", {}).get("feature_loss", "mse")
    if was != cfg.distill.feature_loss:
        raise OfflineKDError(f"{arg('resume')}: {last} was trained with distill.feature_loss {was}, not "
                             f"{cfg.distill.feature_loss} (its heads differ); start a new run instead")
    if before.get("views", now["views"]) != now["views"]:
        raise OfflineKDError(f"{arg('resume')}: {last} was trained with other views ({before.get('views')}); "
                             f"start a new run instead")


def _views(cfg: ExperimentConfig, cache, untranscribed: list[str], log) -> tuple[tuple, int, list[str]]:
    """The views the student and its targets are seen through: (specs, seed, the splits viewed), or ((), 0, []).
    From the cache (distill.views, if given, must equal its views), or with --online-teacher from distill.views,
    for the training split and every untranscribed one."""
    d, train = cfg.distill, train_splits(cfg.data)[0]
    asked = parse_views(d.views, "distill.views")
    if cache is None:
        return asked, d.view_seed, ([train] + untranscribed if asked else [])
    cv = cache.meta.views
    stored = parse_views(cv["views"], f"{cache.path}: dump.views")
    if not stored or train not in cv["splits"]:
        if asked:
            raise OfflineKDError(f"distill.views: the cache {cache.path} has no views of '{train}' (dump it with "
                                 f"dump.views and dump.view_splits), or leave distill.views out")
        return (), 0, []
    if asked and (asked != stored or d.view_seed != cv["seed"]):
        raise OfflineKDError(f"distill.views / view_seed differ from the views the cache {cache.path} was dumped "
                             f"with ({cv['views']}, seed {cv['seed']}); leave them out to use the cache's")
    viewed = [s for s in [train] + untranscribed if s in cv["splits"]]
    log(f"views: {len(stored)} per utterance ({', '.join(_describe(v) for v in stored)}) of {', '.join(viewed)}; "
        f"each batch is given one view and the teacher targets computed on it")
    return stored, cv["seed"], viewed


def auto_pseudo_labels(untranscribed: list, online_teacher=None) -> str:
    """What distill.pseudo_labels auto trains on, given the cached untranscribed splits (every view): the LM's
    labels (AUTO_LM_LABELS) where each holds an LM N-best, else greedy (also with a live teacher, or no such split)."""
    lm = bool(untranscribed) and not online_teacher and all(s is not None and s.has_lm_nbest for s in untranscribed)
    return AUTO_LM_LABELS if lm else "greedy"


def _check_lm_pseudo_labels(cfg: ExperimentConfig, online_teacher, untranscribed: list[list], names: list[str]):
    """distill.pseudo_labels lm / lm_1best needs a cache whose untranscribed splits (every view) hold an LM N-best."""
    which = cfg.distill.pseudo_labels
    if online_teacher:
        raise OfflineKDError(f"distill.pseudo_labels: {which} reads the LM N-best stored in a cache "
                             f"(dump.lm_targets); with {arg('online_teacher')} use greedy")
    if not names:
        raise OfflineKDError(f"distill.pseudo_labels: {which} applies to untranscribed audio; give "
                             "distill.untranscribed_splits (or use greedy)")
    for per_view in untranscribed:
        for split in per_view:
            if not split.has_lm_nbest:
                raise OfflineKDError(f"distill.pseudo_labels: {which}, but split '{split.name}' of {cfg.distill.cache} "
                                     f"has no LM N-best; dump it with dump.lm_targets (splits: "
                                     f"[{split_of(split.name)[0]}])")


LOW_CONFIDENCE = 0.75     # median teacher confidence below which train-student warns (docs/usage.md)


def _report_confidence(cached, reader, valid: np.ndarray, name: str, d, log) -> None:
    """Before training: how sure the teacher is of the pseudo-labels of an untranscribed split (its stored
    confidence), with a warning where it is unsure and they are trained at full weight."""
    if cached.confidence is None or not len(valid):
        return
    conf = np.array([cached.confidence[cached.position[reader.utterance_ids[i]]] for i in valid])
    med = float(np.median(conf))
    log(f"teacher confidence on '{name}' (the mean posterior of its 1-best's tokens): median {med:.3f}, "
        f"p10 {float(np.quantile(conf, 0.1)):.3f}")
    if med < LOW_CONFIDENCE and not (d.confidence_weighting or d.untranscribed_beta is not None
                                     or d.min_confidence is not None):
        log(f"warning: the teacher is unsure of its pseudo-labels on '{name}' (median confidence {med:.2f} < "
            f"{LOW_CONFIDENCE}): they are trained at full CTC weight; consider distill.confidence_weighting and a "
            f"lower distill.untranscribed_beta (docs/usage.md)")


def _confident(threshold: float, cached: list, reader, name: str, valid: np.ndarray, online_teacher, log):
    """The utterances of an untranscribed split whose teacher confidence (stored by the dump; with views, the
    mean over them) reaches `threshold`; the share kept is logged."""
    if online_teacher or any(c is None for c in cached):     # (online_teacher: True where no cache is read)
        raise OfflineKDError("distill.min_confidence reads the teacher confidence a cache stores; with "
                             f"{arg('online_teacher')} leave it out")
    if any(c.confidence is None for c in cached):
        raise OfflineKDError(f"distill.min_confidence: the cache's split '{cached[0].name}' stores no teacher "
                             f"confidence (dumped before offline-kd stored it): dump it again")
    conf = np.mean([[c.confidence[c.position[reader.utterance_ids[i]]] for i in valid] for c in cached], axis=0) \
        if len(valid) else np.zeros(0)
    kept = valid[conf >= threshold] if len(valid) else valid
    log(f"distill.min_confidence {threshold:g}: {len(kept)} of {len(valid)} untranscribed utterances of '{name}' "
        f"kept ({100 * len(kept) / max(len(valid), 1):.1f}%; teacher confidence median "
        f"{float(np.median(conf)) if len(conf) else 0:.3f})")
    if not len(kept):
        raise OfflineKDError(f"distill.min_confidence {threshold:g}: no untranscribed utterance of '{name}' reaches "
                             f"it; lower it")
    return kept


def _describe(v) -> str:
    masks = (f" +{v.time_masks}x{v.time_mask_width}t" if v.time_masks else "") + \
            (f" +{v.freq_masks}x{v.freq_mask_width}f" if v.freq_masks else "")
    return f"speed {v.speed:g}{masks}"


def _codebooks(d, cache, teacher_dims: dict, mapping: dict, log, teacher=None) -> dict:
    """distill.feature_loss codebook: {teacher layer: its codebook codec, fitted} for every mapped teacher layer, from
    the cache (with --online-teacher, from distill.cache too: the live states are quantised with its codebooks, which
    must have been fitted on this teacher)."""
    if not mapping:
        raise OfflineKDError("distill.feature_loss codebook needs distill.gamma > 0 and a distill.layer_mapping")
    source = cache if cache is not None else TeacherCache(d.cache, d.storage_options, verify_reads=d.verify_reads)
    if teacher is not None and source.meta.teacher.get("weights_sha256") != weights_sha256(teacher):
        raise OfflineKDError(f"distill.feature_loss codebook with {arg('online_teacher')}: the codebooks of {d.cache} were "
                             f"fitted on another teacher's states (its weights differ); dump this teacher with the "
                             f"codebook codec first")
    out = {}
    for s, t in sorted(mapping.items()):
        codec = source.hidden_codecs.get(t)
        if codec is None or codec.name != "codebook":
            raise OfflineKDError(f"distill.feature_loss codebook: student layer {s} is mapped to teacher layer {t}, "
                                 f"which {d.cache} stores " + (f"with the {codec.name} codec" if codec else "not at all")
                                 + "; dump it with dump.codecs.hidden: {name: codebook} (or feature_loss: mse)")
        if codec.dim != teacher_dims.get(t, codec.dim):
            raise OfflineKDError(f"distill.feature_loss codebook: teacher layer {t} is {teacher_dims[t]} wide, the "
                                 f"codebooks of {d.cache} are for {codec.dim}")
        out[t] = codec
    log("feature loss: codebook cross-entropy, " + ", ".join(
        f"teacher layer {t}: {c.num_codebooks} x {c.entries} entries (reconstruction error {c.relative_error:.3f})"
        for t, c in out.items()) + (f" (codebooks of {d.cache})" if cache is None else ""))
    return out


def _open_untranscribed(cfg: ExperimentConfig, corpus, log) -> list:
    """The splits of `distill.untranscribed_splits`, validated: [(name, reader, valid indices)]."""
    out = []
    for name in cfg.distill.untranscribed_splits:
        reader, idx = open_split(corpus, name, cfg.model, cfg.data.skip_invalid, log)
        if reader.transcribed:
            log(f"distill.untranscribed_splits: '{name}' has transcripts; they are not used (the teacher's 1-best is)")
        out.append((name, reader, idx))
    limit = cfg.distill.untranscribed_limit
    if limit is not None and out:
        total, left = sum(len(idx) for _, _, idx in out), limit
        for j, (name, reader, idx) in enumerate(out):
            out[j], left = (name, reader, idx[:left]), max(0, left - len(idx))
        out = [o for o in out if len(o[2])]
        log(f"distill.untranscribed_limit {limit}: the first {min(limit, total)} of {total} untranscribed "
            f"utterances of {', '.join(n for n, _, _ in out)} kept (before any distill.min_confidence filter)")
    return out


# the teacher-baseline dev WER gap below which the robustness study (benchmarks/robustness.py) measured no reliable
# gain: train-student warns before training
USEFUL_GAP = 5.0


def teacher_verdict(teacher_dev: dict | None, baseline_dev: dict, same: bool = True) -> str | None:
    """What train-student says before training about a teacher against the CTC-only baseline's dev figures (both
    on the student's dev split when `same`): a warning where distillation is not expected to pay, else None."""
    if teacher_dev is None:
        return None
    t, b = teacher_dev["wer"], baseline_dev["wer"]
    if b <= t:
        return (f"warning: the baseline's dev WER {b:.2f}% is already at or below the teacher's {t:.2f}%: "
                f"distilling from this teacher is unlikely to beat the baseline (train the teacher longer or larger)")
    if same and b - t < USEFUL_GAP:
        return (f"warning: the teacher is only {b - t:.1f} points better than the baseline on dev (WER {t:.2f}% "
                f"against {b:.2f}%): in the robustness study (docs/efficacy.md) distillation beat CTC-only reliably "
                f"only from a teacher at least {USEFUL_GAP:g} points better; expect a small gain or none (train the "
                f"teacher longer or larger)")
    return None


def _teacher_reference(teacher_dev: dict | None, cfg: ExperimentConfig, log) -> dict | None:
    """Print the teacher's dev figures (and the baseline's, with distill.compare_baseline); warn when the baseline
    is already as good as the teacher. Returns the figures the trainer prints beside the student's, when they were
    measured on the student's dev split."""
    if teacher_dev is None:
        log("teacher dev WER: not recorded (its checkpoint has no dev evaluation, or the cache predates the record)")
        same = False
    else:
        same = (Path(str(teacher_dev.get("corpus"))).resolve() == Path(cfg.data.corpus).resolve()
                and teacher_dev.get("split") == cfg.data.dev_split)
        where = "" if same else f" (on {teacher_dev.get('corpus')}:{teacher_dev.get('split')}, not this dev split)"
        when = f"epoch {teacher_dev['epoch']}" if teacher_dev.get("epoch") is not None else \
            "greedy, measured on the cached dev split"
        log(f"teacher dev WER {teacher_dev['wer']:.2f}% CER {teacher_dev['cer']:.2f}% "
            f"({when}){where}: a distilled student converges towards it")
    base = cfg.distill.compare_baseline
    if base:
        path = Path(base) / "checkpoint_best.pt" if Path(base).is_dir() else Path(base)
        if not path.is_file():
            raise OfflineKDError(f"distill.compare_baseline: {base} is neither a run directory with "
                                 f"checkpoint_best.pt nor a checkpoint")
        b = checkpoint_dev(load_checkpoint(path))
        if b is None:
            raise OfflineKDError(f"distill.compare_baseline: {path} has no dev evaluation")
        log(f"baseline {base}: dev WER {b['wer']:.2f}% CER {b['cer']:.2f}%")
        verdict = teacher_verdict(teacher_dev, b, same)
        if verdict:
            log(verdict)
    elif teacher_dev is not None:
        log("hint: set distill.compare_baseline to the CTC-only student's run and train-student says before training "
            "whether this teacher is good enough to pay (docs/efficacy.md, robustness)")
    return {"name": "teacher", "wer": teacher_dev["wer"], "cer": teacher_dev["cer"]} if same else None
