"""What the cache buys an ablation: one dump + N students from the cache, against N students each running the live
teacher (`--online-teacher`), the same students and settings (issue #14 item 6).

    python benchmarks/ablation_cost.py --dump configs/demo/dump.yaml --distill configs/demo/distill.yaml \
        --students 3 --set train.epochs=2 --device cpu

Every dump and training run is its own process (`offline-kd dump-teacher` / `train-student`, seeds 0..N-1, one
after another) under `_peak.py`, which records its wall time, its peak host memory (max RSS) and, on a GPU, its
peak GPU memory (`torch.cuda.max_memory_allocated`). The table gives the totals (dump + N offline runs vs N online
runs) and the per-run peaks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import command_line, machine, write_section

HERE = Path(__file__).resolve().parent


def measured(*args, env=None) -> dict:
    """Run `offline-kd ARGS` under _peak.py: {"seconds", "max_rss_mb", "cuda_peak_mb"}."""
    p = subprocess.run([sys.executable, str(HERE / "_peak.py"), *args], capture_output=True, text=True,
                       env={**os.environ, **(env or {})})
    if p.returncode != 0:
        raise SystemExit(f"offline-kd {' '.join(args)} failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dump", required=True, help="dump config (its teacher is the online teacher too)")
    ap.add_argument("--distill", required=True, help="distillation config of the students")
    ap.add_argument("--students", type=int, default=6, help="N: students in the ablation")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="key=value for every student")
    ap.add_argument("--dump-set", dest="dump_sets", action="append", default=[], help="key=value for the dump")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--section", default="ablation-cost")
    ap.add_argument("--caller", default=None, help="the command to quote instead of this one (a script that ran it)")
    args = ap.parse_args()
    import yaml
    teacher = yaml.safe_load(open(args.dump))["dump"]["teacher"]
    for kv in args.dump_sets:
        if kv.startswith("dump.teacher="):
            teacher = kv.split("=", 1)[1]
    if isinstance(teacher, dict):        # an entry point or a Hugging Face directory: inline YAML (JSON) on the CLI
        teacher = json.dumps(teacher)
    tmp = Path(tempfile.mkdtemp(prefix="ablation_cost_"))
    try:
        cache = tmp / "cache.zarr"
        dump = measured("dump-teacher", "--config", args.dump, *[a for s in args.dump_sets for a in ("--set", s)],
                        "--set", f"dump.output={cache}", "--set", "dump.progress=false",
                        "--set", f"dump.device={args.device}")
        common = [a for s in args.sets for a in ("--set", s)] + ["--set", "train.progress=false",
                                                                 "--set", f"train.device={args.device}",
                                                                 "--set", f"distill.cache={cache}"]
        offline, online = [], []
        for seed in range(args.students):
            for mode, runs in (("offline", offline), ("online", online)):
                extra = ["--online-teacher", teacher] if mode == "online" else []
                runs.append(measured("train-student", "--config", args.distill, *common, "--set",
                                     f"train.seed={seed}", "--set", f"train.output_dir={tmp / f'{mode}{seed}'}",
                                     *extra))
                print(f"student {seed} {mode}: {runs[-1]}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    t_off = dump["seconds"] + sum(r["seconds"] for r in offline)
    t_on = sum(r["seconds"] for r in online)
    peak = lambda runs, k: max(r[k] for r in runs)  # noqa: E731
    gpu = dump["cuda_peak_mb"] is not None
    mem = "GPU" if gpu else "host"
    key = "cuda_peak_mb" if gpu else "max_rss_mb"
    lines = [
        "## Ablation cost: one dump + N students from the cache vs N students with a live teacher\n",
        f"`{args.caller or command_line()}`\n",
        f"Machine: {machine()}. Teacher `{teacher}`; students `{args.distill}` with "
        f"{' '.join(args.sets) or 'no overrides'}, seeds 0..{args.students - 1}; every run a separate process, one "
        f"after another (offline and online alternating); wall time includes start-up, data loading and the dev "
        f"evaluations; peak {mem} memory per process.\n",
        f"| | wall time (s) | peak {mem} memory per run (MB) |", "|---|---|---|",
        f"| dump-teacher, once | {dump['seconds']:.1f} | {dump[key]:.0f} |",
        f"| {args.students} students from the cache | {sum(r['seconds'] for r in offline):.1f} | "
        f"{peak(offline, key):.0f} |",
        f"| **offline ablation: dump + {args.students} students** | **{t_off:.1f}** | |",
        f"| **online ablation: {args.students} students with the live teacher** | **{t_on:.1f}** | "
        f"{peak(online, key):.0f} |",
        f"\nOffline / online wall time: **{t_off / t_on:.3f}** (below 1: the cache pays for itself at N = "
        f"{args.students}). Per student: offline {sum(r['seconds'] for r in offline) / args.students:.1f} s, "
        f"online {t_on / args.students:.1f} s; the dump costs {dump['seconds']:.1f} s once.",
    ]
    write_section(args.section, "\n".join(lines))


if __name__ == "__main__":
    main()
