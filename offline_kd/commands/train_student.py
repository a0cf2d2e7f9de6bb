"""`offline-kd train-student`: distil a student from the teacher cache with the seed's hybrid loss.

The teacher checkpoint is never read (unless `--online-teacher` asks for live targets, for comparison). Before any
training the cache is checked against the corpus and the student: complete, same vocabulary, same subsampling,
every training utterance present with the same feature hash and frame count, every mapped teacher layer cached.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from offline_kd.cache.reader import TeacherCache
from offline_kd.config import ExperimentConfig, ModelConfig, build_dataclass
from offline_kd.data.distill_dataset import DistillBatchDataset
from offline_kd.data.sampler import SortedRunBatchSampler
from offline_kd.errors import OfflineKDError
from offline_kd.losses.kd import hybrid_loss, temperature_at
from offline_kd.models.augment import SpecAugment
from offline_kd.models.bilstm import build_model, count_parameters
from offline_kd.models.projection import FeatureProjections
from offline_kd.commands.common import open_train_dev
from offline_kd.training.checkpoint import load_checkpoint, model_from_checkpoint, seed_everything
from offline_kd.training import distributed
from offline_kd.training.trainer import Trainer


def check_cache(cache: TeacherCache, split, reader, indices: np.ndarray, vocab, model_cfg: ModelConfig,
                layer_mapping: dict[int, int]) -> None:
    """Refuse, with the reason, a cache that does not match the corpus, the vocabulary or the student."""
    meta, path = cache.meta, cache.path
    if meta["vocab_sha256"] != vocab.sha256:
        raise OfflineKDError(f"{path}: the cache was made with another vocabulary than {reader.path.parent}'s "
                             f"(vocab sha256 {meta['vocab_sha256'][:12]} != {vocab.sha256[:12]})")
    if meta["num_classes"] != model_cfg.num_classes:
        raise OfflineKDError(f"{path}: cached log-probs have {meta['num_classes']} classes, "
                             f"model.num_classes is {model_cfg.num_classes}")
    if meta["subsampling"] != model_cfg.subsampling:
        raise OfflineKDError(f"{path}: the teacher subsamples by {meta['subsampling']}, the student by "
                             f"{model_cfg.subsampling} (model.subsampling); frames would not line up")
    for s, t in layer_mapping.items():
        if t not in cache.layer_dims:
            raise OfflineKDError(f"distill.layer_mapping: teacher layer {t} is not in the cache "
                                 f"(cached layers: {sorted(cache.layer_dims)})")
        if not 1 <= s <= model_cfg.num_layers:
            raise OfflineKDError(f"distill.layer_mapping: student layer {s} out of range 1..{model_cfg.num_layers}")
    missing, changed, frames = [], [], []
    hashes = reader.feature_hashes or [reader.compute_feature_hash(i) for i in range(len(reader))]
    for i in indices:
        u = reader.utterance_ids[i]
        p = split.position.get(u)
        if p is None:
            missing.append(u)
            continue
        if split.feature_hashes[p] != hashes[i]:
            changed.append(u)
        if split.input_frames[p] != reader.lengths[i]:
            frames.append(u)
    for what, ids in (("not in the cache", missing), ("features differ from the cached ones (feature_sha256)",
                                                      changed), ("frame count differs from the cache", frames)):
        if ids:
            raise OfflineKDError(f"{path} does not match {reader.path}: {len(ids)} utterance(s) {what}: "
                                 f"{', '.join(ids[:8])}{' ...' if len(ids) > 8 else ''}")


class DistillLoss:
    """loss_fn(model, batch, epoch) for the trainer; `scalars(epoch)` logs the temperature."""

    def __init__(self, cfg: ExperimentConfig, projections: FeatureProjections, augment: SpecAugment,
                 device: torch.device, teacher=None):
        self.d = cfg.distill
        self.mapping = {int(s): int(t) for s, t in self.d.layer_mapping.items()} if self.d.gamma else {}
        self.projections, self.augment, self.device, self.teacher = projections, augment, device, teacher

    def scalars(self, epoch: int) -> dict:
        return {"train/temperature": temperature_at(epoch, self.d.temperature_schedule)}

    def teacher_targets(self, batch, x, lengths):
        if self.teacher is None:
            return (batch["teacher_log_probs"].to(self.device).transpose(0, 1), batch["teacher_lengths"],
                    {L: h.to(self.device) for L, h in batch["teacher_hidden"].items()},
                    batch["teacher_tokens"].to(self.device), batch["teacher_token_lengths"].to(self.device))
        from offline_kd.decoding.greedy import greedy_ids
        with torch.no_grad():   # the live teacher sees the same (un-augmented) input the dump saw
            lp, out_len, hidden = self.teacher.forward_with_hidden_states(x, lengths, sorted(set(self.mapping.values())))
        seqs = greedy_ids(lp, out_len)
        tokens = torch.tensor([t for s in seqs for t in s], dtype=torch.long, device=self.device)
        return lp, out_len.cpu(), hidden, tokens, torch.tensor([len(s) for s in seqs], device=self.device)

    def __call__(self, model, batch, epoch):
        x = batch["features"].to(self.device)
        lengths = batch["feature_lengths"].to(self.device)
        t_lp, t_len, t_hidden, t_tokens, t_token_len = self.teacher_targets(batch, x, lengths)
        log_probs, out_len, hidden = model.forward_with_hidden_states(self.augment(x, lengths), lengths,
                                                                      sorted(self.mapping))
        if not torch.equal(out_len.cpu(), t_len.cpu()):
            bad = [u for u, a, b in zip(batch["utterance_ids"], out_len.tolist(), t_len.tolist()) if a != b]
            raise OfflineKDError(f"student and cached teacher frame counts differ for {', '.join(bad[:4])}")
        projected = self.projections(hidden) if self.mapping else None
        return hybrid_loss(log_probs, out_len, batch["labels"].to(self.device), batch["label_lengths"].to(self.device),
                           t_lp, temperature_at(epoch, self.d.temperature_schedule), self.d.alpha, self.d.beta,
                           self.d.gamma, projected, t_hidden, self.mapping, self.d.seq_weight, t_tokens, t_token_len)


def _quiet(*_):
    pass


def run(cfg: ExperimentConfig, resume: bool = False, online_teacher: str | None = None, log=print) -> dict:
    d = cfg.distill
    if d is None:
        raise OfflineKDError("the config has no 'distill' section (cache, alpha, beta, gamma, ...); "
                             "for CTC-only training use `offline-kd train`")
    env, device = distributed.setup(cfg.train.device)
    if not env.is_main:
        log = _quiet
    augment = SpecAugment(cfg.augment, allow_frame_change=False)
    corpus, (train_reader, train_idx), (dev_reader, dev_idx) = open_train_dev(cfg.data, cfg.model, log)
    mapping = {int(s): int(t) for s, t in d.layer_mapping.items()} if d.gamma else {}

    teacher, split, teacher_dims = None, None, {}
    if online_teacher:
        teacher, t_vocab, _ = model_from_checkpoint(online_teacher, device)
        if t_vocab.sha256 != corpus.vocab.sha256:
            raise OfflineKDError(f"--online-teacher {online_teacher}: vocabulary differs from {corpus.dir}'s")
        teacher_dims = {L: teacher.hidden_size for L in range(1, teacher.config.num_layers + 1)}
        for t in mapping.values():
            if t not in teacher_dims:
                raise OfflineKDError(f"distill.layer_mapping: teacher layer {t} out of range 1..{teacher.config.num_layers}")
        log(f"online distillation from {online_teacher} (the cache is not used)")
    else:
        cache = TeacherCache(d.cache, d.storage_options)
        split = cache.split(cfg.data.train_split)
        check_cache(cache, split, train_reader, train_idx, corpus.vocab, cfg.model, mapping)
        teacher_dims = cache.layer_dims
        log(f"cache {d.cache}: {len(split)} utterances, {split.num_frames} frames, "
            f"log_probs {cache.meta['codecs']['log_probs']['name']}, hidden "
            f"{ {int(k): v['name'] for k, v in cache.meta['codecs']['hidden'].items()} }")

    seed_everything(cfg.train.seed)
    model = build_model(cfg.model).to(device)
    if d.init_checkpoint:
        ckpt = load_checkpoint(d.init_checkpoint)
        if build_dataclass(ModelConfig, ckpt["model_config"]) != cfg.model:
            raise OfflineKDError(f"distill.init_checkpoint {d.init_checkpoint}: its model config differs from 'model'")
        model.load_state_dict(ckpt["model_state_dict"])
    projections = FeatureProjections(mapping, model.hidden_size, teacher_dims).to(device)
    log(f"student: {cfg.model.num_layers} x BiLSTM({cfg.model.hidden_dim}), {count_parameters(model):,} parameters "
        f"(+{count_parameters(projections):,} in projection heads, not exported); layer mapping {mapping}")

    dataset = DistillBatchDataset(train_reader, corpus.vocab, split, layers=set(mapping.values()))
    sampler = SortedRunBatchSampler(train_reader.lengths, train_idx, cfg.data.batch_size,
                                    cfg.data.max_frames_per_batch, seed=cfg.train.seed, rank=env.rank,
                                    world_size=env.world_size)
    loss_fn = DistillLoss(cfg, projections, augment, device, teacher)
    meta = {"distillation": {"cache": None if online_teacher else d.cache, "online_teacher": online_teacher,
                             "cache_identity": None if online_teacher else cache.meta["identity_sha256"],
                             "projections": {"layer_mapping": mapping, "teacher_dims": teacher_dims}}}
    last = Path(cfg.train.output_dir) / "checkpoint_last.pt"
    if resume and last.is_file():
        before = load_checkpoint(last).get("distillation", {})
        if before.get("cache_identity") != meta["distillation"]["cache_identity"]:
            raise OfflineKDError(f"--resume: {last} was trained from another cache or teacher than "
                                 f"{'--online-teacher' if online_teacher else d.cache} (identity differs); "
                                 f"start a new run instead")
    trainer = Trainer(cfg, model, corpus.vocab, dataset, train_reader.lengths, train_idx, dev_reader, dev_idx,
                      loss_fn, device, extra=projections, extra_meta=meta, sampler=sampler, rank=env.rank,
                      world_size=env.world_size)
    trainer.fit(resume=resume)
    distributed.shutdown()
    return {"output_dir": cfg.train.output_dir, "best_dev_wer": trainer.best_wer}
