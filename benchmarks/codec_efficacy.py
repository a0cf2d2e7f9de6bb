"""Does the compact cache change the distilled student? Students with identical settings and seeds from the float32
cache, from the compact cache, from a live teacher (online), and the CTC-only baseline; dev/test greedy WER.

    python benchmarks/codec_efficacy.py --distill configs/demo/distill.yaml --baseline configs/demo/baseline.yaml \
        --teacher runs/demo/teacher/checkpoint_best.pt --compact-codecs log_probs=topk,topk_k=32,topk_coverage=0.999,hidden=int8 \
        --compact-codecs float16:log_probs=float16,hidden=float16 --seeds 0,1 --jobs 2 --out runs/efficacy

Caches are dumped into --out; every training run is a separate process into --out/NAME-seedS (finished runs are
reused, so a rerun with more seeds only trains the new ones). `--jobs N` runs N trainings at once with
cores / N threads each (small students train faster per core on one thread); keep --jobs fixed across reruns, since
the thread count changes floating-point reduction order and so the exact trajectory. The table (per seed, means,
and the compact-minus-float32 difference paired by seed) goes to docs/benchmarks.md. A `float16` row (KL ~1e-7, so
its targets are the float32 ones for any practical purpose) is the A/A control: its difference from the float32
row is what the training itself scatters, the floor below which no codec difference can be seen.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from _common import command_line, machine, write_section


THREADS = {}   # environment overrides for the training processes (OMP_NUM_THREADS with --jobs)


def cli(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "offline_kd", *args], capture_output=True, text=True,
                       env={**os.environ, **THREADS})
    if check and p.returncode != 0:
        raise SystemExit(f"offline-kd {' '.join(args)} failed:\n{p.stderr[-2000:]}")
    return p


def dump(teacher, corpus, out: Path, codecs: dict, splits: list[str]):
    cfg = out.with_suffix(".yaml")
    cfg.write_text(yaml.safe_dump({"dump": {"teacher": teacher, "corpus": corpus, "splits": splits,
                                            "output": str(out), "progress": False, "codecs": codecs}}))
    cli("dump-teacher", "--config", str(cfg), "--overwrite")   # the demo caches are small: always dumped afresh
    return json.loads(cli("cache", "info", str(out), "--json").stdout)


def train(kind, config, out: Path, seed: int, sets: list[str], extra: list[str] = ()):
    if not (out / "done").is_file():
        args = [kind, "--config", config, "--set", f"train.output_dir={out}", "--set", f"train.seed={seed}",
                "--set", "train.progress=false", *[a for s in sets for a in ("--set", s)], *extra]
        if (out / "checkpoint_last.pt").is_file():
            args.append("--resume")
        cli(*args)
        (out / "done").write_text("")
    res = {}
    for split in ("dev", "test"):
        r = json.loads(cli("evaluate", "--checkpoint", str(out / "checkpoint_best.pt"), "--split", split,
                           "--json").stdout.strip().splitlines()[-1])
        res[split] = r["wer"]
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--distill", required=True)
    ap.add_argument("--baseline", required=True)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--compact-codecs", required=True, action="append",
                    help="[NAME:]comma-separated key=value codec settings (repeatable: one row per compact cache)")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--jobs", type=int, default=1, help="trainings run at once (each with cores / jobs threads)")
    ap.add_argument("--out", default="runs/efficacy")
    args = ap.parse_args()
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    THREADS["OMP_NUM_THREADS"] = str(threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dcfg = yaml.safe_load(open(args.distill))
    corpus = dcfg["data"]["corpus"]
    splits = ["train"] + list(dcfg.get("distill", {}).get("untranscribed_splits") or [])
    compacts = {}
    for spec in args.compact_codecs:
        name, _, settings = spec.rpartition(":") if ":" in spec.split(",", 1)[0] else ("", "", spec)
        codecs = {}
        for kv in settings.split(","):
            k, v = kv.split("=")
            codecs[k] = yaml.safe_load(v)
        compacts[name or "compact"] = codecs
    tag = {n: ("compact" if n == "compact" else f"compact-{n}") for n in compacts}
    infos = {"float32": dump(args.teacher, corpus, out / "float32.zarr", {"log_probs": "float32", "hidden": "float32"},
                         splits)}
    for n, codecs in compacts.items():
        infos[n] = dump(args.teacher, corpus, out / f"{tag[n]}.zarr", codecs, splits)
    seeds = [int(s) for s in args.seeds.split(",")]
    label = {n: f"offline, {n} cache" for n in compacts}
    runs = {"CTC-only baseline": lambda seed: train("train", args.baseline, out / f"baseline-seed{seed}", seed, []),
            "offline, float32 cache": lambda seed: train("train-student", args.distill, out / f"float32-seed{seed}",
                                                         seed, [f"distill.cache={out / 'float32.zarr'}"])}
    for n in compacts:
        runs[label[n]] = (lambda n: lambda seed: train("train-student", args.distill, out / f"{tag[n]}-seed{seed}",
                                                       seed, [f"distill.cache={out / (tag[n] + '.zarr')}"]))(n)
    runs["online (live teacher)"] = lambda seed: train("train-student", args.distill, out / f"online-seed{seed}",
                                                       seed, [], ["--online-teacher", args.teacher])
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {(name, seed): pool.submit(fn, seed) for seed in seeds for name, fn in runs.items()}
        for (name, seed), f in futures.items():
            print(json.dumps({"run": name, "seed": seed, **f.result()}), flush=True)
    rows = {name: [futures[(name, seed)].result() for seed in seeds] for name in runs}
    mean = lambda xs: statistics.mean(xs)  # noqa: E731
    lines = ["## Efficacy: students from the float32 cache, the compact cache, a live teacher, and CTC only\n",
             f"`{command_line()}`\n",
             f"Machine: {machine()}; {args.jobs} training run(s) at a time with {threads} thread(s) each. Settings: "
             f"`{args.distill}` (distilled) and `{args.baseline}` (baseline), seeds {seeds}; greedy WER (%) of "
             f"each run's best-dev checkpoint. Compact caches: "
             + "; ".join(f"{label[n]}: `{c}` = {100 * infos[n]['ratio_to_float32']:.2f}% of float32 bytes per "
                         f"frame ({infos[n]['target_bytes_per_frame']:.1f} vs "
                         f"{infos['float32']['target_bytes_per_frame']:.1f} stored float32 bytes)"
                         for n, c in compacts.items()) + ".\n",
             "| student | " + " | ".join(f"dev WER s{s}" for s in seeds) + " | mean dev | "
             + " | ".join(f"test WER s{s}" for s in seeds) + " | mean test |",
             "|---|" + "---|" * (2 * len(seeds) + 2)]
    for name, rs in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{r['dev']:.2f}" for r in rs) + f" | {mean([r['dev'] for r in rs]):.2f} | "
                     + " | ".join(f"{r['test']:.2f}" for r in rs) + f" | {mean([r['test'] for r in rs]):.2f} |")
    f32 = rows["offline, float32 cache"]
    for n in compacts:
        for split in ("test", "dev"):
            diffs = [c[split] - f[split] for c, f in zip(rows[label[n]], f32)]
            spread = (f", standard error of the mean {statistics.stdev(diffs) / len(diffs) ** 0.5:.2f} (at this "
                      f"scatter, {math.ceil((statistics.stdev(diffs) / 0.3) ** 2)} seeds would bring it to 0.3)"
                      if len(diffs) > 1 else "")
            lines.append(f"\n{label[n]} minus float32 cache, {split} WER paired by seed: "
                         f"{', '.join(f'{d:+.2f}' for d in diffs)}; mean **{mean(diffs):+.2f} points**{spread}"
                         + (" (goal: within 0.3)." if split == "test" else "."))
    online = [o["test"] - f["test"] for o, f in zip(rows["online (live teacher)"], f32)]
    lines.append(f"\nFor scale: online minus float32 cache (the same targets up to float rounding), test WER "
                 f"paired by seed: {', '.join(f'{d:+.2f}' for d in online)}; mean {mean(online):+.2f}; the seed "
                 f"spread of the float32 students' test WER: {min(r['test'] for r in f32):.2f} to "
                 f"{max(r['test'] for r in f32):.2f}.")
    write_section("codec-efficacy", "\n".join(lines))


if __name__ == "__main__":
    main()
