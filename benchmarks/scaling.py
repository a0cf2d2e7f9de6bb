"""Scale-out figures: (1) dump-teacher with 1 process vs torchrun with N processes, and (2) distillation training
throughput reading the cache from local disk vs from an S3-compatible server on loopback (moto, in its own process).

    python benchmarks/scaling.py --teacher runs/demo/teacher/checkpoint_best.pt --corpus data/demo \
        --cache cache/demo_teacher.zarr --split train --nproc 2 --runs 3 --batches 24

(1) runs the real command lines (`offline-kd dump-teacher`, `torchrun --nproc_per_node N -m offline_kd
dump-teacher`), start-up included, into fresh folders, interleaved; the figure is the median wall time.
(2) copies the cache to s3://, then trains the same student on the same batches from each copy, as the trainer does
(batches loaded one step ahead by the background prefetch thread; forward, backward, AdamW); median frames/s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import Timer, command_line, machine, median, write_section
from offline_kd.cache.reader import TeacherCache
from offline_kd.config import ExperimentConfig, build_dataclass
from offline_kd.data.corpus import Corpus
from offline_kd.data.distill_dataset import DistillBatchDataset
from offline_kd.data.prefetch import prefetch
from offline_kd.data.sampler import SortedRunBatchSampler
from offline_kd.models.augment import SpecAugment
from offline_kd.models.interface import build_model
from offline_kd.losses.modules import DistillationLoss


def dump_once(nproc: int, teacher: str, corpus: str, split: str, out: Path) -> float:
    sets = ["--set", f"dump.teacher={teacher}", "--set", f"dump.corpus={corpus}", "--set", f"dump.output={out}",
            "--set", f"dump.splits=[{split}]", "--set", "dump.progress=false", "--set", "dump.device=cpu",
            "--set", "dump.codecs.log_probs=float16", "--set", "dump.codecs.hidden=float16"]
    base = [sys.executable, "-m", "offline_kd"] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
         "-m", "offline_kd"]
    cfg = Path(__file__).resolve().parent.parent / "configs" / "dump_config.yaml"
    t = time.perf_counter()
    subprocess.run(base + ["dump-teacher", "--config", str(cfg), *sets], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, endpoint
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto server did not start")


def train_fps(cfg, reader, vocab, split, batches, mapping, tdims) -> float:
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    if cfg.distill.feature_loss != "mse":
        raise SystemExit(f"{__file__}: measures the MSE feature term only (distill.feature_loss: "
                         f"{cfg.distill.feature_loss} is not wired here)")
    loss_fn = DistillationLoss(cfg.distill, model.hidden_size, tdims, SpecAugment(cfg.augment, False),
                               torch.device("cpu"))
    opt = torch.optim.AdamW(list(model.parameters()) + list(loss_fn.projections.parameters()), lr=1e-4)
    ds = DistillBatchDataset(reader, vocab, split, layers=set(mapping.values()))
    frames = 0
    with Timer() as t:
        for batch in prefetch((ds[b] for b in batches), 2):
            loss, _ = loss_fn(model, batch, 1)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            frames += int(batch["feature_lengths"].sum())
    return frames / t.seconds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--cache", required=True, help="an existing local cache of --corpus (for part 2)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batches", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--student-hidden", type=int, default=256)
    ap.add_argument("--skip-dump", action="store_true")
    args = ap.parse_args()
    teacher, corpus_dir = str(Path(args.teacher).resolve()), str(Path(args.corpus).resolve())
    lines = ["## Scale-out: torchrun dump and object-storage training\n", f"`{command_line()}`\n",
             f"Machine: {machine()}.\n"]

    if not args.skip_dump:
        walls = {1: [], args.nproc: []}
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.runs):
                for n in walls:
                    out = Path(tmp) / f"d{n}_{r}.zarr"
                    walls[n].append(dump_once(n, teacher, corpus_dir, args.split, out))
                    print(f"run {r + 1}, {n} process(es): {walls[n][-1]:.1f} s")
                    shutil.rmtree(out)
        frames = int(TeacherCache(args.cache).split(args.split).num_frames)
        one = median(walls[1])
        lines += [f"### dump-teacher, 1 process vs torchrun --nproc_per_node {args.nproc}\n",
                  f"Teacher `{args.teacher}`, `{args.split}` split of `{args.corpus}` ({frames} output frames), "
                  f"configs/dump_config.yaml with float16 codecs; whole command lines (start-up, planning, finalising "
                  f"included), median of {args.runs} interleaved runs. torchrun gives each rank one thread "
                  f"(OMP_NUM_THREADS=1); the single process uses all cores.\n",
                  "| processes | wall s (median) | output frames/s | vs 1 process | runs (s) |", "|---|---|---|---|---|"]
        for n, xs in walls.items():
            m = median(xs)
            lines.append(f"| {n} | {m:.1f} | {frames / m:.0f} | {one / m:.2f}x | {', '.join(f'{x:.1f}' for x in xs)} |")
        lines.append("")

    import s3fs
    proc, endpoint = start_moto()
    try:
        options = {"endpoint_url": endpoint, "key": "bench", "secret": "bench"}
        fs = s3fs.S3FileSystem(**options)
        fs.mkdir("bench")
        t = time.perf_counter()
        fs.put(str(Path(args.cache).resolve()), "bench/cache.zarr", recursive=True)
        upload = time.perf_counter() - t
        url = "s3://bench/cache.zarr"
        corpus = Corpus(args.corpus)
        reader = corpus.split(args.split)
        local, remote = TeacherCache(args.cache), TeacherCache(url, options)
        mapping = {2: 2, 3: 4}
        tdims = {L: local.layer_dims[L] for L in mapping.values()}
        cfg = build_dataclass(ExperimentConfig, {
            "model": {"input_dim": corpus.feature_dim, "hidden_dim": args.student_hidden, "num_layers": 4,
                      "num_classes": len(corpus.vocab), "dropout": 0.1, "subsampling": local.meta.subsampling},
            "distill": {"cache": "", "layer_mapping": mapping, "temperature_schedule": [[1, 1.0]]}})
        sampler = SortedRunBatchSampler(reader.lengths, np.arange(len(reader)), args.batch_size, None, seed=0)
        sampler.set_epoch(1)
        batches = sampler.batches()[: args.batches]
        res = {"local": [], "s3 (loopback)": []}
        for r in range(args.runs):
            for name, cache in (("local", local), ("s3 (loopback)", remote)):
                fps = train_fps(cfg, reader, corpus.vocab, cache.split(args.split), batches, mapping, tdims)
                res[name].append(fps)
                print(f"run {r + 1} {name}: {fps:.0f} frames/s")
    finally:
        proc.terminate()
    loc = median(res["local"])
    codecs = local.meta.codecs
    lines += ["### train-student throughput: local cache vs S3 cache\n",
              f"Cache `{args.cache}` (log_probs {codecs['log_probs']['name']}, hidden "
              f"{next(iter(codecs['hidden'].values()))['name']}) and its copy on a moto S3 server in another "
              f"process on 127.0.0.1 (upload {upload:.1f} s). Student 4 x BiLSTM({args.student_hidden}), layer "
              f"mapping {mapping}, {len(batches)} batches of up to {args.batch_size} utterances, same batches for "
              f"both; median of {args.runs} interleaved runs.\n",
              "| cache | frames/s (median) | vs local | runs |", "|---|---|---|---|"]
    for name, xs in res.items():
        m = median(xs)
        lines.append(f"| {name} | {m:.0f} | {m / loc:.2f}x | {', '.join(f'{x:.0f}' for x in xs)} |")
    lines.append("\nGoal: S3 at least 0.8x local.")
    write_section("scaling", "\n".join(lines))


if __name__ == "__main__":
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    main()
