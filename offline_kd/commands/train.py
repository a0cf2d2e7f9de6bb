"""`offline-kd train`: a CTC model (the teacher, or the CTC-only student baseline) from a corpus."""

from __future__ import annotations

from offline_kd.config import ExperimentConfig, validate_experiment
from offline_kd.data.dataset import SpeechDataset, collate
from offline_kd.data.sampler import BucketBatchSampler
from offline_kd.data.views import (CollatedByView, ViewBatchSampler, ViewReader, max_view_lengths, parse_views,
                                   valid_in_views)
from offline_kd.losses.modules import CTCLoss
from offline_kd.models.interface import (build_model, check_waveform_frames, count_parameters, describe_model,
                                        reads_waveform)
from offline_kd.models.augment import SpecAugment, refuse_feature_augment
from offline_kd.data.splits import open_train_dev, quiet
from offline_kd.models.checkpoint import seed_everything
from offline_kd.runtime import distributed
from offline_kd.training.trainer import Trainer, inference_meta


def run(cfg: ExperimentConfig, resume: bool = False, log=print) -> dict:
    validate_experiment(cfg, "train")
    env, device = distributed.setup(cfg.train.device)
    return distributed.run_then_shutdown(lambda: _run(cfg, resume, env, device, log if env.is_main else quiet))


def _run(cfg: ExperimentConfig, resume: bool, env, device, log) -> dict:
    corpus, (train_reader, train_idx), (dev_reader, dev_idx) = open_train_dev(cfg.data, cfg.model, log)
    seed_everything(cfg.train.seed)
    model = build_model(cfg.model).to(device)
    log(f"model: {describe_model(model)}, {count_parameters(model):,} parameters; "
        f"train {len(train_idx)} utterances, dev {0 if dev_idx is None else len(dev_idx)}; device {device}")
    augment = SpecAugment(cfg.augment, allow_frame_change=True)

    loss_fn = CTCLoss(augment, device)
    dataset, lengths, sampler = SpeechDataset(train_reader, corpus.vocab, reads_waveform(model)), train_reader.lengths, None
    refuse_feature_augment(model, cfg)
    check_waveform_frames(model, corpus.meta.get("frontend"))
    if cfg.augment.speed_perturb:        # each batch stretched by one of the speeds, drawn from (seed, epoch, batch)
        views = parse_views(list(cfg.augment.speed_perturb), "augment.speed_perturb")
        readers = [ViewReader(train_reader, v, cfg.train.seed, k) for k, v in enumerate(views)]
        train_idx = valid_in_views(readers, train_idx, corpus.vocab, cfg.model, cfg.data.skip_invalid, log)
        dataset = CollatedByView([SpeechDataset(r, corpus.vocab) for r in readers], collate)
        lengths = max_view_lengths(train_reader.lengths, views)
        sampler = ViewBatchSampler(BucketBatchSampler(lengths, train_idx, cfg.data.batch_size,
                                                      cfg.data.max_frames_per_batch, cfg.data.num_buckets,
                                                      shuffle=True, seed=cfg.train.seed, rank=env.rank,
                                                      world_size=env.world_size), len(views), cfg.train.seed)
        log(f"speed perturbation: {', '.join(f'{v.speed:g}' for v in views)} (one per batch)")

    trainer = Trainer(cfg, model, corpus.vocab, dataset, lengths, train_idx, dev_reader, dev_idx, loss_fn, device,
                      collate_fn=collate, rank=env.rank, world_size=env.world_size, sampler=sampler,
                      extra_meta=inference_meta(corpus))
    trainer.fit(resume=resume)
    return {"output_dir": cfg.train.output_dir, "best_dev_wer": trainer.best_wer}
