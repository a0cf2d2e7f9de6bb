"""Cost of checking every cached utterance's crc32 on read (`distill.verify_reads`, on by default).

    python benchmarks/read_check.py --cache cache/demo_teacher.zarr --corpus data/demo --runs 5

Each run reads the training data path train-student uses (`DistillBatchDataset` over `SortedRunBatchSampler`
batches: features + cached targets decoded), once with the check and once without, alternating so both see the
same machine state; reports the median batches' frames/s of each and their ratio.
"""

from __future__ import annotations

import argparse

import numpy as np

from _common import Timer, command_line, machine, median, write_section
from offline_kd.cache.reader import TeacherCache
from offline_kd.data.corpus import Corpus
from offline_kd.data.distill_dataset import DistillBatchDataset
from offline_kd.data.sampler import SortedRunBatchSampler


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--split", default="train")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--train-config", default=None,
                    help="also time one epoch of train-student with this config, checked and unchecked")
    args = ap.parse_args()
    corpus = Corpus(args.corpus)
    reader = corpus.split(args.split)
    fps = {True: [], False: []}
    for _ in range(args.runs):
        for check in (True, False):
            cache = TeacherCache(args.cache, verify_reads=check)
            split = cache.split(args.split)
            ds = DistillBatchDataset(reader, corpus.vocab, split, layers=set(cache.layers))
            sampler = SortedRunBatchSampler(reader.lengths, np.arange(len(reader)), args.batch_size, seed=0)
            frames = 0
            with Timer() as t:
                for b in sampler:
                    frames += int(ds[b]["feature_lengths"].sum())
            fps[check].append(frames / t.seconds)
    on, off = median(fps[True]), median(fps[False])
    train = {True: [], False: []}
    if args.train_config:
        import copy
        import json
        import tempfile
        from pathlib import Path
        import yaml
        from offline_kd.commands import train_student
        from offline_kd.config import ExperimentConfig, build_dataclass
        base = yaml.safe_load(Path(args.train_config).read_text())
        for r in range(max(2, args.runs // 2)):
            for check in (True, False):
                with tempfile.TemporaryDirectory() as tmp:
                    d = copy.deepcopy(base)
                    d["train"].update(epochs=1, output_dir=tmp, progress=False, eval_every=1000)
                    d["distill"].update(cache=args.cache, verify_reads=check)
                    d["data"]["corpus"] = args.corpus
                    train_student.run(build_dataclass(ExperimentConfig, d), log=lambda *_: None)
                    rows = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
                    train[check].append(next(x for x in rows if x["event"] == "epoch")["frames_per_second"])
    name = cache.meta.codecs["log_probs"]["name"]
    body = (f"`{command_line()}`\n\n{machine()}. Cache `{args.cache}` (log-probs `{name}`), split `{args.split}`, "
            f"batch {args.batch_size}, median of {args.runs} runs, alternating.\n\n"
            f"| read path | input frames/s |\n|---|---|\n| crc32 checked on every read (default) | {on:,.0f} |\n"
            f"| unchecked (`distill.verify_reads: false`) | {off:,.0f} |\n\n"
            f"Checked / unchecked: **{on / off:.3f}x** ({100 * (1 - on / off):.1f}% of the read path's time).")
    if args.train_config:
        ton, toff = median(train[True]), median(train[False])
        body += (f"\n\nOne epoch of `train-student --config {args.train_config}`, median of "
                 f"{len(train[True])} runs each (the epoch's training frames/s, before its dev evaluation): {ton:,.0f} frames/s checked, {toff:,.0f} unchecked: "
                 f"**{ton / toff:.3f}x**.")
    write_section(f"read-check-{name}", body)


if __name__ == "__main__":
    main()
