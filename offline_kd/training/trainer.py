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
import copy
import json
import math
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
from offline_kd.errors import OfflineKDError, arg
from offline_kd.locking import run_dir_lock
from offline_kd.losses.modules import LossFn
from offline_kd.models.interface import CTCModel, count_parameters
from offline_kd.runtime import distributed
from offline_kd.models.checkpoint import (load_checkpoint, rng_state, save_checkpoint, seed_everything,
                                            set_rng_state)
from offline_kd.runtime.loaders import evaluate_greedy, resolve_num_workers, worker_context
from offline_kd.models.numerics import grad_scaler, with_precision
from offline_kd.training.callbacks import (CheckpointAveraging, EarlyStopping, MetricsLog, ReferenceComparison,
                                          TensorBoardLog)


class _WithHidden(nn.Module):
    """DDP calls `forward`; this routes it to `forward_with_hidden_states` so both entry points go through DDP."""

    def __init__(self, model: CTCModel):
        super().__init__()
        self.model = model

    def forward(self, x, lengths, layers=None, **kwargs):
        return self.model.forward_with_hidden_states(x, lengths, layers, **kwargs)


class _DDPModel:
    """What a loss function receives as `model` under DDP: the model's two entry points, through DDP's forward."""

    def __init__(self, ddp, model: CTCModel):
        self.ddp, self.model = ddp, model

    def __call__(self, x, lengths):
        log_probs, out_len, _ = self.ddp(x, lengths, None)
        return log_probs, out_len

    def forward_with_hidden_states(self, x, lengths, return_layer_indices=None, **kwargs):
        return self.ddp(x, lengths, list(return_layer_indices or []), **kwargs)

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
#: (train.average: checkpoint_avg.pt from the epochs kept from then on; average_of may not change, since the kept
#: epochs were chosen by it)
RESUME_SAFE = ("train.epochs", "train.progress", "train.log_every", "train.device", "data.num_workers",
               "distill.verify_reads", "distill.storage_options", "distill.cache", "distill.compare_baseline",
               "distill.decode_on", "train.average")


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
        raise OfflineKDError(f"{arg('resume')}: the config differs from the one {path} was trained with ({shown}"
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
        # dev_reference {"name", "wer", "cer"}: figures printed beside each dev evaluation (the teacher's)
        self.callbacks = ([MetricsLog(self.out), TensorBoardLog(self.out)] if self.is_main else []) + [
            ReferenceComparison(dev_reference), EarlyStopping(cfg.train.patience, self.is_main)]
        if cfg.train.average:
            self.callbacks.append(CheckpointAveraging(cfg.train.average, cfg.train.average_of, self.out, self.is_main))

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

    def log_record(self, record: dict, scalars: Optional[dict] = None) -> None:
        """A record for metrics.jsonl (and its scalars for TensorBoard), through the callbacks; rank 0 only."""
        if not self.is_main:
            return
        for cb in self.callbacks:
            cb.log(record, scalars)

    def _close_callbacks(self) -> None:
        for cb in self.callbacks:
            cb.close()

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
                    self._close_callbacks()
                    shutil.rmtree(self.out, ignore_errors=True)
                raise

    def _fit(self, resume: bool) -> dict:
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        self._start(resume)
        summary = {}
        for epoch in range(self.start_epoch, self.cfg.train.epochs + 1):
            if any(cb.should_stop(self) for cb in self.callbacks):     # (a resumed run that had already stopped)
                break
            summary = self._epoch(epoch)
        for cb in self.callbacks:
            cb.on_fit_end(self)
        self._close_callbacks()
        return summary

    def _start(self, resume: bool) -> None:
        """Resume from checkpoint_last.pt (or refuse to overwrite one), save the resolved config, start the
        callbacks."""
        last = self.out / "checkpoint_last.pt"
        if resume:
            if not last.is_file():
                raise OfflineKDError(f"{arg('resume')}: no checkpoint at {last}")
            self.resume(last)
            if self.is_main:
                self._truncate_metrics()
        else:
            if last.is_file():
                raise OfflineKDError(f"{self.out} already holds a run (checkpoint_last.pt); "
                                     f"use {arg('resume')} to continue it or choose another train.output_dir")
            seed_everything(self.cfg.train.seed)
        if self.is_main:
            save_config(self.cfg, self.out / "config.yaml")
        for cb in self.callbacks:
            cb.on_fit_start(self, resume)
        if self.is_main and not resume:
            self.log_record({"event": "start", "num_parameters": count_parameters(self.model),
                             "train_batches": len(self.sampler)})

    def _epoch(self, epoch: int) -> dict:
        """One epoch: the steps, the dev evaluation (every train.eval_every epochs and the last), the best and
        last checkpoints, the record and the callbacks. -> the epoch's record."""
        record = self._train_steps(epoch)
        dev = self._evaluate(epoch)
        if dev is not None:
            record.update({"dev_wer": dev["wer"], "dev_cer": dev["cer"]})
        self._track_best(epoch, dev, record)
        self.log_record(record, {"epoch/" + k: v for k, v in record.items()
                                 if isinstance(v, (int, float)) and k not in ("event", "best")})
        if self.is_main:
            save_checkpoint(self.out / "checkpoint_last.pt", self._state(epoch, dev))
            msg = f"epoch {epoch}: loss {record.get('train_total', float('nan')):.4f}"
            if dev is not None:
                msg += f", dev WER {dev['wer']:.2f}% CER {dev['cer']:.2f}%"
                msg += "".join(cb.epoch_message(dev) for cb in self.callbacks)
            tqdm.write(msg + f", {record['frames_per_second']:.0f} frames/s")
        for cb in self.callbacks:
            cb.on_epoch_end(self, epoch, dev)
        return record

    def _train_steps(self, epoch: int) -> dict:
        """The epoch's batches, optimizer steps every train.accumulation_steps; -> the epoch's record (mean terms,
        speed, the loss's per-epoch scalars)."""
        cfg = self.cfg
        self.sampler.set_epoch(epoch)
        self.model.train()
        if self.extra is not None:
            self.extra.train()
        sums: dict[str, float] = {}
        n_batches, frames = 0, 0
        start = time.perf_counter()
        batches = prefetch(self.loader, 0 if self.num_workers else cfg.data.prefetch_batches)
        bar = tqdm(batches, total=len(self.sampler), desc=f"epoch {epoch}/{cfg.train.epochs}", unit="batch",
                   disable=not (cfg.train.progress and self.is_main), dynamic_ncols=True, leave=False)
        self.optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(bar):
            loss, terms = self._micro_batch(i, batch, epoch)
            n_batches += 1
            frames += int(batch["feature_lengths"].sum())
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            elapsed = time.perf_counter() - start
            bar.set_postfix(loss=f"{float(terms.get('total', loss)):.3f}",
                            fps=f"{frames * self.world_size / max(elapsed, 1e-9):.0f}")
        elapsed = time.perf_counter() - start
        return {"event": "epoch", "epoch": epoch, "step": self.step, "seconds": elapsed,
                "frames_per_second": frames * self.world_size / max(elapsed, 1e-9),
                **{f"train_{k}": v / max(n_batches, 1) for k, v in sums.items()},
                **{k.split("/", 1)[1]: v for k, v in self.extra_scalars(epoch).items()}}

    def _micro_batch(self, i: int, batch: dict, epoch: int):
        """Forward and backward of the epoch's batch i (its share of an accumulated step), and the optimizer step
        on the last micro-batch of a step. -> (loss, {term: value})."""
        accum, num_batches = self.cfg.train.accumulation_steps, len(self.sampler)
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
        if stepping:
            self._optimizer_step(epoch, terms)
        return loss, terms

    def _optimizer_step(self, epoch: int, terms: dict) -> None:
        """Clip, step (through the fp16 scaler when there is one), schedule; log every train.log_every steps."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.train.grad_clip)
        if self.scaler is not None:   # skips the step when fp16 gradients overflowed
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.step % self.cfg.train.log_every == 0:
            scalars = {f"train/{k}": float(v) for k, v in terms.items()}
            scalars["train/lr"] = self.scheduler.get_last_lr()[0]
            scalars["train/grad_norm"] = float(grad_norm)
            scalars.update(self.extra_scalars(epoch))
            self.log_record({"event": "step", "epoch": epoch, "step": self.step, **scalars}, scalars)

    def _evaluate(self, epoch: int) -> Optional[dict]:
        """Greedy dev WER/CER on rank 0 every train.eval_every epochs and on the last (broadcast to every rank);
        None on other epochs or without a dev split."""
        cfg = self.cfg
        if self.dev_reader is None or not (epoch % cfg.train.eval_every == 0 or epoch == cfg.train.epochs):
            return None
        dev = None
        if self.is_main:
            full = evaluate_greedy(self.model, self.dev_reader, self.dev_indices, self.vocab, self.device,
                                   batch_size=max(cfg.data.batch_size, 1))
            dev = {k: full[k] for k in ("wer", "cer", "num_utterances")}
        if self.world_size > 1:     # every rank tracks the best WER (and waits for rank 0's evaluation)
            dev = distributed.broadcast(dev, distributed.env_from_os())
        return dev

    def _track_best(self, epoch: int, dev: Optional[dict], record: dict) -> None:
        """The best epoch: the lowest dev WER, ties broken by the CER, then by the later epoch (a run at 100% WER
        keeps its latest epoch of the lowest CER, not its first); patience counts strict improvements only. A new
        best writes checkpoint_best.pt."""
        if dev is None:
            return
        score, best = (dev["wer"], dev["cer"]), (self.best_wer, self.best_cer)
        self.since_best = 0 if score < best else self.since_best + 1
        record["evals_since_best"] = self.since_best
        if score <= best:
            self.best_wer, self.best_cer = score
            record["best"] = True
            if self.is_main:
                save_checkpoint(self.out / "checkpoint_best.pt", self._state(epoch, dev))

    def write_average(self, epochs: list[int], paths: list[Path]) -> dict:
        """checkpoint_avg.pt: the mean of the weights in `paths` (floating tensors averaged in float64, the rest
        taken from the last), the final record otherwise, evaluated on dev and logged. -> its dev figures."""
        states = [torch.load(p, map_location="cpu", weights_only=True) for p in paths]
        avg = {k: (torch.stack([s[k].double() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v)
               for k, v in states[-1].items()}
        model = copy.deepcopy(self.model)
        model.load_state_dict(avg)
        dev = None
        if self.dev_reader is not None:
            full = evaluate_greedy(model, self.dev_reader, self.dev_indices, self.vocab, self.device,
                                   batch_size=max(self.cfg.data.batch_size, 1))
            dev = {k: full[k] for k in ("wer", "cer", "num_utterances")}
        state = self._state(epochs[-1], dev)
        state.update({"model_state_dict": avg, "averaged_epochs": epochs})
        save_checkpoint(self.out / "checkpoint_avg.pt", state)
        self.log_record({"event": "average", "epochs": epochs, "of": self.cfg.train.average_of,
                         **({"dev_wer": dev["wer"], "dev_cer": dev["cer"]} if dev else {})})
        tqdm.write(f"checkpoint_avg.pt: the mean of epochs {', '.join(map(str, epochs))}"
                   + (f", dev WER {dev['wer']:.2f}% CER {dev['cer']:.2f}% (best epoch {self.best_wer:.2f}%)"
                      if dev else ""))
        return dev

    def extra_scalars(self, epoch: int) -> dict:
        """The loss's per-epoch scalars such as the KD temperature (prefixed 'train/')."""
        return self.loss_fn.scalars(epoch)
