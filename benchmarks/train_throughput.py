"""Training throughput on the same batches: CTC-only student, offline distillation per cache, online distillation.

    python benchmarks/train_throughput.py --corpus data/seed --teacher runs/seed/teacher/checkpoint_best.pt \
        --cache float16=cache/seed_f16.zarr --cache compact=cache/seed_compact.zarr --batches 12 --runs 3

Student 4 x BiLSTM(256) (the seed's), layer mapping {2: 2, 3: 4}, hybrid loss with the seed's weights. Every mode
runs the same batches (the first --batches of epoch 1 of the distillation sampler), each step = data loading and
cache decoding (in the main process, num_workers = 0) + forward + backward + AdamW step. Modes are interleaved
within each run; the figure is the median over runs of input frames per second. `--decode-on device` (or `both`)
adds, per cache, the mode `offline:NAME@device`: the stored codes go to the device and are decoded there
(`distill.decode_on: device`, the default on a GPU).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from _common import Timer, command_line, machine, median, write_section
from offline_kd.cache.reader import TargetDecoder, TeacherCache
from offline_kd.config import ExperimentConfig, build_dataclass
from offline_kd.data.corpus import Corpus
from offline_kd.data.distill_dataset import DistillBatchDataset
from offline_kd.data.sampler import SortedRunBatchSampler
from offline_kd.losses.kd import ctc_loss
from offline_kd.models.augment import SpecAugment
from offline_kd.models.interface import build_model
from offline_kd.losses.modules import DistillationLoss
from offline_kd.models.checkpoint import model_from_checkpoint
from offline_kd.runtime.loaders import resolve_device


def run_mode(mode, cfg, reader, vocab, batches, device, cache_split=None, teacher=None, teacher_dims=None):
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device).train()
    on_device = mode.endswith("@device")
    if cfg.distill.feature_loss != "mse":
        raise SystemExit(f"{__file__}: measures the MSE feature term only (distill.feature_loss: "
                         f"{cfg.distill.feature_loss} is not wired here)")
    loss_fn = DistillationLoss(cfg.distill, model.hidden_size, teacher_dims, SpecAugment(cfg.augment, False), device,
                               teacher, decoder=TargetDecoder(cache_split.cache) if on_device else None)
    opt = torch.optim.AdamW(list(model.parameters()) + list(loss_fn.projections.parameters()), lr=1e-4)
    ds = DistillBatchDataset(reader, vocab, cache_split, layers={2, 4}, encoded=on_device)
    frames = 0
    with Timer() as t:
        for b in batches:
            batch = ds[b]
            if mode == "ctc":
                lp, ol = model(batch["features"].to(device), batch["feature_lengths"].to(device))
                loss = ctc_loss(lp, batch["labels"].to(device), ol, batch["label_lengths"].to(device))
            else:
                loss, _ = loss_fn(model, batch, 1)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            frames += int(batch["feature_lengths"].sum())
    return frames / t.seconds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--teacher", required=True, help="for the online mode only")
    ap.add_argument("--cache", action="append", default=[], help="NAME=PATH (repeatable)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--section", default="train-throughput", help="section of docs/benchmarks.md to write")
    ap.add_argument("--decode-on", choices=["host", "device", "both"], default="host",
                    help="where offline modes decode the cached targets")
    args = ap.parse_args()
    device = resolve_device(args.device)
    corpus = Corpus(args.corpus)
    reader = corpus.split(args.split)
    cfg = build_dataclass(ExperimentConfig, {
        "model": {"input_dim": corpus.feature_dim, "hidden_dim": 256, "num_layers": 4,
                  "num_classes": len(corpus.vocab), "dropout": 0.3},
        "distill": {"cache": "", "layer_mapping": {2: 2, 3: 4}}})
    sampler = SortedRunBatchSampler(reader.lengths, np.arange(len(reader)), args.batch_size, None, seed=0)
    sampler.set_epoch(1)
    batches = sampler.batches()[: args.batches]
    teacher = model_from_checkpoint(args.teacher, device)[0]
    tdims = {L: teacher.hidden_size for L in (2, 4)}
    caches = {}
    for spec in args.cache:
        name, path = spec.split("=", 1)
        c = TeacherCache(path)
        caches[name] = (c.split(args.split), c.meta.codecs)
    where = {"host": [""], "device": ["@device"], "both": ["", "@device"]}[args.decode_on]
    results = {m: [] for m in ["ctc", *[f"offline:{n}{w}" for n in caches for w in where], "online"]}
    for r in range(args.runs):
        for mode in results:
            if mode == "ctc":
                fps = run_mode("ctc", cfg, reader, corpus.vocab, batches, device, None, None, tdims)
            elif mode == "online":
                fps = run_mode("online", cfg, reader, corpus.vocab, batches, device, None, teacher, tdims)
            else:
                fps = run_mode(mode, cfg, reader, corpus.vocab, batches, device,
                               caches[mode.split(":", 1)[1].split("@")[0]][0], None, tdims)
            results[mode].append(fps)
            print(f"run {r + 1} {mode}: {fps:.0f} frames/s")
    ctc = median(results["ctc"])
    online = median(results["online"])
    frames = int(sum(reader.lengths[i] for b in batches for i in b))
    lines = ["## Training throughput: CTC-only vs offline vs online distillation\n",
             f"`{command_line()}`\n",
             f"Machine: {machine()}. Student 4 x BiLSTM(256), teacher {teacher.config.num_layers} x "
             f"BiLSTM({teacher.config.hidden_dim}), V = {len(corpus.vocab)}, {corpus.feature_dim}-dim input; "
             f"{len(batches)} batches of up to {args.batch_size} utterances ({frames} input frames) from "
             f"`{args.split}`, identical for every mode; median of {args.runs} interleaved runs.\n",
             "| mode | codecs | frames/s (median) | vs CTC-only | vs online | runs |", "|---|---|---|---|---|---|"]
    for mode, xs in results.items():
        codec = ""
        if mode.startswith("offline:"):
            c = caches[mode.split(":", 1)[1].split("@")[0]][1]
            codec = f"log_probs {c['log_probs']['name']}, hidden {next(iter(c['hidden'].values()))['name']}"
        m = median(xs)
        lines.append(f"| {mode} | {codec} | {m:.0f} | {m / ctc:.3f} | {m / online:.2f} | "
                     f"{', '.join(f'{x:.0f}' for x in xs)} |")
    lines.append("\nGoals: offline >= 0.95x CTC-only and >= 1.6x online.")
    write_section(args.section, "\n".join(lines))


if __name__ == "__main__":
    main()
