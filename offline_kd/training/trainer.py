"""The training loop shared by `train` (CTC) and `train-student` (hybrid KD).

A command supplies the model, a loss (`offline_kd.losses.modules.LossFn`: `loss_fn(model, batch, epoch)` returning
`(loss, {term: value})`, its own trainable modules such as feature projections, per-epoch scalars) and the data;
the trainer owns everything else: optimizer and LR schedule,
gradient accumulation and clipping, dev evaluation every N epochs with greedy WER, best/last checkpoints,
exact `--resume`, TensorBoard + metrics.jsonl, progress bar, seeds.

Resume is at epoch granularity: checkpoint_last.pt is written after each epoch with the optimizer, scheduler and
RNG state; batches depend only on (seed, epoch), so a resumed run retraces the uninterrupted one exactly.

Under torchrun (world_size > 1) the model and the loss's trainable modules are wrapped in DistributedDataParallel; the sampler
deals the epoch's batches out round-robin, so an optimizer step of N ranks sees the same batches as N accumulation
steps of one process (global batch = batch size x accumulation_steps x ranks). Rank 0 evaluates, logs and writes
checkpoints; every rank resumes from the same checkpoint_last.pt.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from offline_kd.config import ExperimentConfig, save_config
from offline_kd.data.corpus import SplitReader
from offline_kd.data.prefetch import prefetch
from offline_kd.data.sampler import BucketBatchSampler
from offline_kd.data.vocab import Vocabulary
from offline_kd.errors import OfflineKDError
from offline_kd.locking import run_dir_lock
from offline_kd.losses.modules import LossFn
from offline_kd.models.interface import CTCModel, count_parameters
from offline_kd.runtime import distributed
from offline_kd.models.checkpoint import (load_checkpoint, rng_state, save_checkpoint, seed_everything,
                                            set_rng_state)
from offline_kd.runtime.loaders import evaluate_greedy, resolve_num_workers, worker_context
from offline_kd.models.numerics import grad_scaler, with_precision


class _WithHidden(nn.Module):
    """DDP calls `forward`; this routes it to `forward_with_hidden_states` so both entry points go through DDP."""

    def __init__(self, model: CTCModel):
        super().__init__()
        self.model = model

    def forward(self, x, lengths, layers=None):
        return self.model.forward_with_hidden_states(x, lengths, layers)


class _DDPModel:
    """What a loss function receives as `model` under DDP: the model's two entry points, through DDP's forward."""

    def __init__(self, ddp, model: CTCModel):
        self.ddp, self.model = ddp, model

    def __call__(self, x, lengths):
        log_probs, out_len, _ = self.ddp(x, lengths, None)
        return log_probs, out_len

    def forward_with_hidden_states(self, x, lengths, return_layer_indices=None):
        return self.ddp(x, lengths, list(return_layer_indices or []))

    def __getattr__(self, name):
        return getattr(self.model, name)


def make_optimizer(params, cfg) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise OfflineKDError(f"train.optimizer: unknown optimizer '{cfg.optimizer}' (adam | adamw)")


def make_scheduler(optimizer, cfg, total_steps: int):
    warm = max(0, cfg.warmup_steps)

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if cfg.scheduler == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


#: settings a --resume may change: they extend or observe a run without changing what it has computed so far
RESUME_SAFE = ("train.epochs", "train.progress", "train.log_every", "train.device", "data.num_workers",
               "distill.verify_reads", "distill.storage_options", "distill.cache", "distill.compare_baseline",
               "distill.decode_on")


def _flatten(d, prefix=""):
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict) and v and all(isinstance(x, str) for x in v) and not k.endswith("mapping") \
                and k != "storage_options":
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resume_config(saved: Optional[dict], now: dict, path: Path) -> None:
    """Refuse a --resume whose resolved config differs from the run's saved one outside RESUME_SAFE, naming the
    keys (a changed model would otherwise fail deep in load_state_dict, a changed lr go unnoticed)."""
    if saved is None:          # a checkpoint from before configs were saved in it
        return
    a, b = _flatten(saved), _flatten(now)
    # a key newer than the checkpoint reads as its default there (a run from before the key existed used it)
    defaults = _flatten(asdict(ExperimentConfig()))
    a.update({k: defaults[k] for k in b if k not in a and k in defaults})
    changed = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and k not in RESUME_SAFE]
    if changed:
        shown = "; ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in changed[:6])
        raise OfflineKDError(f"--resume: the config differs from the one {path} was trained with ({shown}"
                             f"{' ...' if len(changed) > 6 else ''}); a resumed run may change only "
                             f"{', '.join(RESUME_SAFE)}; start a new run (another train.output_dir) for the rest")


def inference_meta(corpus) -> dict:
    """What a checkpoint carries for inference beside the model and vocabulary: the corpus's audio front end (fbank
    options, sample rate, normalisation and its statistics; None for a corpus of precomputed features) and the
    feature dimension, so that `load_model` / `offline-kd transcribe` need the checkpoint alone."""
    return {"frontend": corpus.meta.get("frontend"), "feature_dim": corpus.feature_dim}


class Trainer:
    def __init__(self, cfg: ExperimentConfig, model: CTCModel, vocab: Vocabulary, train_dataset,
                 train_lengths: np.ndarray, train_indices: np.ndarray, dev_reader: Optional[SplitReader],
                 dev_indices: Optional[np.ndarray], loss_fn: LossFn, device: torch.device, *,
                 collate_fn=None, extra_meta: Optional[dict] = None,
                 rank: int = 0, world_size: int = 1, sampler=None, dev_reference: Optional[dict] = None):
        self.cfg, self.model, self.vocab, self.device = cfg, model, vocab, device
        self.extra = extra = loss_fn.trainable
        self.loss_fn = loss_fn
        self.dev_reader, self.dev_indices = dev_reader, dev_indices
        # {"name": ..., "wer": ..., "cer": ...}: figures printed beside each dev evaluation (the teacher's), with a
        # warning the first time this model's dev WER passes them
        self.dev_reference, self._passed_reference = dev_reference, False
        self.rank, self.world_size = rank, world_size
        self.is_main = rank == 0
        self.out = Path(cfg.train.output_dir)
        self.extra_meta = extra_meta or {}
        # own generator: creating a loader iterator must not draw from the global torch RNG, or a resumed run
        # (whose first epoch is a later one) would see different dropout and masking than an uninterrupted run
        self.num_workers = nw = resolve_num_workers(cfg.data.num_workers, device, world_size)
        workers = {"num_workers": nw, "prefetch_factor": 4 if nw else None,
                   "generator": torch.Generator().manual_seed(cfg.train.seed),
                   "multiprocessing_context": worker_context() if nw else None,
                   "persistent_workers": nw > 0, "pin_memory": device.type == "cuda"}
        if sampler is None:
            self.sampler = BucketBatchSampler(train_lengths, train_indices, cfg.data.batch_size,
                                              cfg.data.max_frames_per_batch, cfg.data.num_buckets, shuffle=True,
                                              seed=cfg.train.seed, rank=rank, world_size=world_size)
            self.loader = DataLoader(train_dataset, batch_sampler=self.sampler, collate_fn=collate_fn, **workers)
        else:   # the dataset builds whole batches itself (one contiguous cache read per batch)
            self.sampler = sampler
            self.loader = DataLoader(train_dataset, sampler=sampler, batch_size=None, **workers)
        self.forward_model, self.ddp_modules = model, []
        if world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP
            ids = [device] if device.type == "cuda" else None
            ddp = DDP(_WithHidden(model), device_ids=ids)
            self.forward_model, self.ddp_modules = _DDPModel(ddp, model), [ddp]
            if extra is not None and any(True for _ in extra.parameters()):
                self.ddp_modules.append(loss_fn.wrap_trainable(lambda m: DDP(m, device_ids=ids)))
        # train.precision: the forward pass under autocast (outputs back in float32 for the loss terms)
        self.forward_model = with_precision(self.forward_model, cfg.train.precision, device)
        self.scaler = grad_scaler(cfg.train.precision, device)
        params = list(model.parameters()) + (list(extra.parameters()) if extra is not None else [])
        self.optimizer = make_optimizer(params, cfg.train)
        steps_per_epoch = math.ceil(len(self.sampler) / cfg.train.accumulation_steps)
        self.scheduler = make_scheduler(self.optimizer, cfg.train, steps_per_epoch * cfg.train.epochs)
        self.trainable = params
        self.start_epoch, self.step, self.best_wer = 1, 0, float("inf")
        self.best_cer = float("inf")     # breaks ties of the dev WER (then the later epoch wins)
        self.since_best = 0          # dev evaluations in a row without a new best (train.patience)
        self.steps_per_epoch = steps_per_epoch
        self.tb = None

    # ----------------------------------------------------------------------------------------- checkpoints
    def _state(self, epoch: int, dev: Optional[dict]) -> dict:
        return {
            "model_type": self.model.model_type,
            "model_config": self.model.describe(),
            "model_state_dict": self.model.state_dict(),
            "extra_state_dict": self.extra.state_dict() if self.extra is not None else None,
            "vocab": self.vocab.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": epoch, "step": self.step, "best_wer": self.best_wer, "best_cer": self.best_cer,
            "evals_since_best": self.since_best,
            "dev": {k: v for k, v in (dev or {}).items() if k in ("wer", "cer", "num_utterances")},
            "rng": rng_state(),
            "config": asdict(self.cfg),
            **self.extra_meta,
        }

    def resume(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        check_resume_config(ckpt.get("config"), asdict(self.cfg), path)
        self.model.load_state_dict(ckpt["model_state_dict"])
        if self.extra is not None and ckpt.get("extra_state_dict") is not None:
            self.extra.load_state_dict(ckpt["extra_state_dict"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        self.start_epoch, self.step, self.best_wer = ckpt["epoch"] + 1, ckpt["step"], ckpt["best_wer"]
        self.since_best = int(ckpt.get("evals_since_best", 0))
        self.best_cer = float(ckpt.get("best_cer", float("inf")))      # (older checkpoints: unknown)

    # ------------------------------------------------------------------------------------------------ logs
    def _truncate_metrics(self) -> None:
        """On --resume: drop what the interrupted run logged after its last checkpoint (steps past it, a partly
        logged epoch), so metrics.jsonl holds one history. Written to a temporary file and renamed into place."""
        path = self.out / "metrics.jsonl"
        if not path.is_file():
            return
        keep = []
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            r = json.loads(line)
            if (r.get("event") == "step" and r.get("step", 0) > self.step) or \
                    (r.get("event") == "epoch" and r.get("epoch", 0) >= self.start_epoch):
                continue
            keep.append(line)
        tmp = path.with_name(path.name + ".partial")
        tmp.write_text("".join(x + "\n" for x in keep))
        os.replace(tmp, path)

    def _log(self, record: dict, scalars: Optional[dict] = None) -> None:
        if not self.is_main:
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None and scalars:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, self.step)

    # ------------------------------------------------------------------------------------------------- fit
    def fit(self, resume: bool = False) -> dict:
        """Train (or, with `resume`, continue) in train.output_dir, holding its lock. A run that fails before its
        first checkpoint removes the directory it created: nothing that looks like a run is left behind."""
        created = self.is_main and not self.out.exists()
        with run_dir_lock(self.out, self.is_main):
            try:
                return self._fit(resume)
            except BaseException:
                if created and not (self.out / "checkpoint_last.pt").exists():
                    if self.tb is not None:
                        self.tb.close()
                    shutil.rmtree(self.out, ignore_errors=True)
                raise

    def _fit(self, resume: bool) -> dict:
        cfg = self.cfg
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        last = self.out / "checkpoint_last.pt"
        if resume:
            if not last.is_file():
                raise OfflineKDError(f"--resume: no checkpoint at {last}")
            self.resume(last)
            if self.is_main:
                self._truncate_metrics()
        else:
            if last.is_file():
                raise OfflineKDError(f"{self.out} already holds a run (checkpoint_last.pt); "
                                     f"use --resume to continue it or choose another train.output_dir")
            seed_everything(cfg.train.seed)
            if self.is_main:
                (self.out / "metrics.jsonl").unlink(missing_ok=True)
        if self.is_main:
            save_config(cfg, self.out / "config.yaml")
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(self.out / "tensorboard"))
            if not resume:
                self._log({"event": "start", "num_parameters": count_parameters(self.model),
                           "train_batches": len(self.sampler)})
        summary = {}
        patience = cfg.train.patience
        window = (patience or 0) * cfg.train.eval_every * self.steps_per_epoch
        if self.is_main and patience and cfg.train.warmup_steps > window:
            tqdm.write(f"warning: train.warmup_steps ({cfg.train.warmup_steps}) outlasts the early-stopping window "
                       f"(train.patience {patience} x eval_every {cfg.train.eval_every} epoch(s) x "
                       f"{self.steps_per_epoch} steps = {window} steps): the run may stop while the learning rate is "
                       f"still warming up; lower train.warmup_steps (e.g. {max(window // 2, 1)}) or raise "
                       f"train.patience", file=sys.stderr)
        for epoch in range(self.start_epoch, cfg.train.epochs + 1):
            if patience and self.since_best >= patience:      # (a resumed run that had already stopped)
                break
            summary = self._epoch(epoch)
            if patience and self.since_best >= patience and epoch < cfg.train.epochs:
                self._log({"event": "early_stop", "epoch": epoch, "best_wer": self.best_wer, "patience": patience})
                if self.is_main:
                    tqdm.write(f"early stop after epoch {epoch} of at most {cfg.train.epochs}: {patience} dev "
                               f"evaluation(s) without a new best (best dev WER {self.best_wer:.2f}%)")
        if self.tb is not None:
            self.tb.close()
        return summary

    def _epoch(self, epoch: int) -> dict:
        cfg = self.cfg
        self.sampler.set_epoch(epoch)
        self.model.train()
        if self.extra is not None:
            self.extra.train()
        accum = cfg.train.accumulation_steps
        sums: dict[str, float] = {}
        n_batches, frames = 0, 0
        start = time.perf_counter()
        batches = prefetch(self.loader, 0 if self.num_workers else cfg.data.prefetch_batches)
        bar = tqdm(batches, total=len(self.sampler), desc=f"epoch {epoch}/{cfg.train.epochs}", unit="batch",
                   disable=not (cfg.train.progress and self.is_main), dynamic_ncols=True, leave=False)
        self.optimizer.zero_grad(set_to_none=True)
        num_batches = len(self.sampler)
        for i, batch in enumerate(bar):
            stepping = (i + 1) % accum == 0 or i + 1 == num_batches
            with contextlib.ExitStack() as stack:
                if not stepping:     # DDP: all-reduce gradients only on the last micro-batch of a step
                    for m in self.ddp_modules:
                        stack.enter_context(m.no_sync())
                loss, terms = self.loss_fn(self.forward_model, batch, epoch)
                if not torch.isfinite(loss):
                    raise OfflineKDError(f"epoch {epoch}: non-finite loss on batch with utterances "
                                         f"{', '.join(batch['utterance_ids'][:4])}")
                group = min(accum, num_batches - (i // accum) * accum)   # the last group of an epoch may be short
                scaled = loss / group
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            n_batches += 1
            frames += int(batch["feature_lengths"].sum())
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            if stepping:
                if self.scaler is not None:
                    self.scaler.unscale_(self.optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, cfg.train.grad_clip)
                if self.scaler is not None:   # skips the step when fp16 gradients overflowed
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                if self.step % cfg.train.log_every == 0:
                    scalars = {f"train/{k}": float(v) for k, v in terms.items()}
                    scalars["train/lr"] = self.scheduler.get_last_lr()[0]
                    scalars["train/grad_norm"] = float(grad_norm)
                    for k, v in self.extra_scalars(epoch).items():
                        scalars[k] = v
                    self._log({"event": "step", "epoch": epoch, "step": self.step, **scalars}, scalars)
            elapsed = time.perf_counter() - start
            bar.set_postfix(loss=f"{float(terms.get('total', loss)):.3f}",
                            fps=f"{frames * self.world_size / max(elapsed, 1e-9):.0f}")
        elapsed = time.perf_counter() - start
        record = {"event": "epoch", "epoch": epoch, "step": self.step, "seconds": elapsed,
                  "frames_per_second": frames * self.world_size / max(elapsed, 1e-9),
                  **{f"train_{k}": v / max(n_batches, 1) for k, v in sums.items()},
                  **{k.split("/", 1)[1]: v for k, v in self.extra_scalars(epoch).items()}}
        dev = None
        if self.dev_reader is not None and (epoch % cfg.train.eval_every == 0 or epoch == cfg.train.epochs):
            if self.is_main:
                full = evaluate_greedy(self.model, self.dev_reader, self.dev_indices, self.vocab, self.device,
                                       batch_size=max(cfg.data.batch_size, 1))
                dev = {k: full[k] for k in ("wer", "cer", "num_utterances")}
            if self.world_size > 1:     # every rank tracks the best WER (and waits for rank 0's evaluation)
                dev = distributed.broadcast(dev, distributed.env_from_os())
            record.update({"dev_wer": dev["wer"], "dev_cer": dev["cer"]})
        # the best epoch: the lowest dev WER, ties broken by the CER, then by the later epoch (a run at 100% WER
        # keeps its latest epoch of the lowest CER, not its first); patience counts strict improvements only
        score, best = (dev["wer"], dev["cer"]) if dev is not None else None, (self.best_wer, self.best_cer)
        if dev is not None:
            self.since_best = 0 if score < best else self.since_best + 1
            record["evals_since_best"] = self.since_best
        if dev is not None and score <= best:
            self.best_wer, self.best_cer = score
            record["best"] = True
            if self.is_main:
                save_checkpoint(self.out / "checkpoint_best.pt", self._state(epoch, dev))
        self._log(record, {"epoch/" + k: v for k, v in record.items()
                           if isinstance(v, (int, float)) and k not in ("event", "best")})
        if self.is_main:
            save_checkpoint(self.out / "checkpoint_last.pt", self._state(epoch, dev))
            msg = f"epoch {epoch}: loss {record.get('train_total', float('nan')):.4f}"
            ref = self.dev_reference
            if dev is not None:
                msg += f", dev WER {dev['wer']:.2f}% CER {dev['cer']:.2f}%"
                if ref:
                    msg += f" ({ref['name']} {ref['wer']:.2f}% / {ref['cer']:.2f}%)"
            msg += f", {record['frames_per_second']:.0f} frames/s"
            tqdm.write(msg)
            if ref and dev is not None and dev["wer"] < ref["wer"] and not self._passed_reference:
                self._passed_reference = True
                tqdm.write(f"warning: dev WER {dev['wer']:.2f}% has passed the {ref['name']}'s {ref['wer']:.2f}%: "
                           f"a distilled student converges towards its teacher, so the teacher now holds it back "
                           f"(train the teacher longer, or lower the distillation weights)")
        return record

    def extra_scalars(self, epoch: int) -> dict:
        """The loss's per-epoch scalars such as the KD temperature (prefixed 'train/')."""
        return self.loss_fn.scalars(epoch)
