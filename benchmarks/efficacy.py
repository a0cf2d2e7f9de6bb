"""Does the compact cache change the distilled student? Students with identical settings and seeds from the float32
cache, from the compact cache, from a live teacher (online), and the CTC-only baseline; dev/test greedy WER.

    python benchmarks/efficacy.py --distill configs/demo/distill.yaml --baseline configs/demo/baseline.yaml \
        --teacher runs/demo/teacher/checkpoint_best.pt --compact-codecs log_probs=topk,topk_k=32,topk_coverage=0.999,hidden=int8 \
        --compact-codecs sampled:log_probs=sampled,sampled_n=32,hidden=int8 --seeds 0,1 --out runs/efficacy

Caches are dumped once into --out (reused when rerun); every training run is a separate process into
--out/NAME-seedS (finished runs are reused). The table goes to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

from _common import command_line, machine, write_section


def cli(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "offline_kd", *args], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise SystemExit(f"offline-kd {' '.join(args)} failed:\n{p.stderr[-2000:]}")
    return p


def dump(teacher, corpus, out: Path, codecs: dict):
    cfg = out.with_suffix(".yaml")
    cfg.write_text(yaml.safe_dump({"dump": {"teacher": teacher, "corpus": corpus, "splits": ["train"],
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
    ap.add_argument("--out", default="runs/efficacy")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = yaml.safe_load(open(args.distill))["data"]["corpus"]
    compacts = {}
    for spec in args.compact_codecs:
        name, _, settings = spec.rpartition(":") if ":" in spec.split(",", 1)[0] else ("", "", spec)
        codecs = {}
        for kv in settings.split(","):
            k, v = kv.split("=")
            codecs[k] = yaml.safe_load(v)
        compacts[name or "compact"] = codecs
    tag = {n: ("compact" if n == "compact" else f"compact-{n}") for n in compacts}
    infos = {"float32": dump(args.teacher, corpus, out / "float32.zarr", {"log_probs": "float32", "hidden": "float32"})}
    for n, codecs in compacts.items():
        infos[n] = dump(args.teacher, corpus, out / f"{tag[n]}.zarr", codecs)
    seeds = [int(s) for s in args.seeds.split(",")]
    label = {n: "offline, compact cache" + ("" if n == "compact" else f" ({n})") for n in compacts}
    rows = {"CTC-only baseline": [], "offline, float32 cache": [], **{label[n]: [] for n in compacts},
            "online (live teacher)": []}
    for seed in seeds:
        rows["CTC-only baseline"].append(train("train", args.baseline, out / f"baseline-seed{seed}", seed, []))
        rows["offline, float32 cache"].append(train("train-student", args.distill, out / f"float32-seed{seed}", seed,
                                                    [f"distill.cache={out / 'float32.zarr'}"]))
        for n in compacts:
            rows[label[n]].append(train("train-student", args.distill, out / f"{tag[n]}-seed{seed}", seed,
                                        [f"distill.cache={out / (tag[n] + '.zarr')}"]))
        rows["online (live teacher)"].append(train("train-student", args.distill, out / f"online-seed{seed}", seed,
                                                   [], ["--online-teacher", args.teacher]))
        print(json.dumps({k: v[-1] for k, v in rows.items()}))
    mean = lambda xs: statistics.mean(xs)  # noqa: E731
    lines = ["## Efficacy: students from the float32 cache, the compact cache, a live teacher, and CTC only\n",
             f"`{command_line()}`\n",
             f"Machine: {machine()}. Settings: `{args.distill}` (distilled) and `{args.baseline}` (baseline), "
             f"seeds {seeds}; greedy WER (%) of each run's best-dev checkpoint. Compact caches: "
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
    f32 = mean([r["test"] for r in rows["offline, float32 cache"]])
    for n in compacts:
        gap = mean([r["test"] for r in rows[label[n]]]) - f32
        lines.append(f"\n{label[n]} minus float32 cache, mean test WER: **{gap:+.2f} points** (goal: within 0.3).")
    write_section("efficacy", "\n".join(lines))


if __name__ == "__main__":
    main()
