"""`offline-kd train`: a CTC model (the teacher, or the CTC-only student baseline) from a corpus."""

from __future__ import annotations

from offline_kd.config import ExperimentConfig
from offline_kd.data.dataset import SpeechDataset, collate
from offline_kd.errors import OfflineKDError
from offline_kd.losses.modules import CTCLoss
from offline_kd.models.bilstm import build_model, count_parameters
from offline_kd.models.augment import SpecAugment
from offline_kd.commands.common import open_train_dev, quiet
from offline_kd.training.checkpoint import seed_everything
from offline_kd.training import distributed
from offline_kd.training.trainer import Trainer


def run(cfg: ExperimentConfig, resume: bool = False, log=print) -> dict:
    if cfg.distill is not None:
        raise OfflineKDError("this config has a 'distill' section: use `offline-kd train-student`")
    env, device = distributed.setup(cfg.train.device)
    return distributed.run_then_shutdown(lambda: _run(cfg, resume, env, device, log if env.is_main else quiet))


def _run(cfg: ExperimentConfig, resume: bool, env, device, log) -> dict:
    corpus, (train_reader, train_idx), (dev_reader, dev_idx) = open_train_dev(cfg.data, cfg.model, log)
    seed_everything(cfg.train.seed)
    model = build_model(cfg.model).to(device)
    log(f"model: {cfg.model.num_layers} x BiLSTM({cfg.model.hidden_dim}), {count_parameters(model):,} parameters; "
        f"train {len(train_idx)} utterances, dev {0 if dev_idx is None else len(dev_idx)}; device {device}")
    augment = SpecAugment(cfg.augment, allow_frame_change=True)

    loss_fn = CTCLoss(augment, device)

    trainer = Trainer(cfg, model, corpus.vocab, SpeechDataset(train_reader, corpus.vocab), train_reader.lengths,
                      train_idx, dev_reader, dev_idx, loss_fn, device, collate_fn=collate,
                      rank=env.rank, world_size=env.world_size)
    trainer.fit(resume=resume)
    return {"output_dir": cfg.train.output_dir, "best_dev_wer": trainer.best_wer}
