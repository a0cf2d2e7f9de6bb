"""Checkpoint averaging (`train.average N`): each run's checkpoint_avg.pt (the mean of its last N epochs' weights)
against its checkpoint_best.pt, test WER greedy and with the study's LM (alpha/beta tuned on dev for each
checkpoint), paired by run, for the runs of a robustness-style study that kept an average.

    python benchmarks/averaging.py --study benchmarks/students.yaml --settings tts_en-bilstm,tts_en-conformer

The runs are those benchmarks/robustness.py trained (it reuses finished ones); this script trains nothing. Each
checkpoint's evaluation is kept beside it (efficacy_eval.json, efficacy_eval_avg.json), as robustness.py keeps its
own. Writes the section `averaging` of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import yaml

import efficacy
from _common import command_line, write_section


def runs_of(study: dict, st: dict) -> list[tuple[str, int, Path]]:
    """(kind, seed, run directory) of the setting's baseline and recipe runs."""
    out = []
    for seed in study["seeds"]:
        out.append(("CTC-only", seed, Path(f"{st['baseline_runs']}-seed{seed}")))
        for name, recipe in study["recipes"].items():
            d = st.get("dirs", {}).get(name, recipe["dir"])
            out.append((f"distilled ({name})", seed, Path(st["out"]) / f"{d}-seed{seed}"))
    return out


def fmt(xs: list[float]) -> str:
    if not xs:
        return "n/a"
    se = statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else float("nan")
    return f"{statistics.mean(xs):+.2f} ± {se:.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", default="benchmarks/students.yaml")
    ap.add_argument("--settings", required=True, help="comma-separated setting names")
    ap.add_argument("--section", default="averaging")
    args = ap.parse_args()
    study = yaml.safe_load(open(args.study))
    by_name = {st["name"]: st for st in study["settings"]}
    rows, missing = [], []
    for name in args.settings.split(","):
        st = by_name[name]
        corpus = yaml.safe_load(open(st["distill"]))["data"]["corpus"]
        lm, alphas, betas = st.get("lm", study.get("lm")), st.get("alphas", study.get("alphas", "0.25,0.5,1")), \
            st.get("betas", study.get("betas", "0,1,2"))
        groups: dict[str, list] = {}
        for kind, seed, run in runs_of(study, st):
            if not (run / "checkpoint_avg.pt").is_file():
                missing.append(str(run))
                continue
            best = efficacy.evaluate(run / "checkpoint_best.pt", corpus, lm, alphas, betas)
            avg = efficacy.evaluate(run / "checkpoint_avg.pt", corpus, lm, alphas, betas,
                                    run / "efficacy_eval_avg.json")
            groups.setdefault(kind, []).append((best, avg))
        for kind, pairs in groups.items():
            g = [a["test"] - b["test"] for b, a in pairs]
            beam = [a["beam"] - b["beam"] for b, a in pairs if a.get("beam") is not None and b.get("beam") is not None]
            rows.append(f"| {name} | {kind} | {len(pairs)} | "
                        f"{statistics.mean(b['test'] for b, _ in pairs):.2f} / "
                        f"{statistics.mean(a['test'] for _, a in pairs):.2f} | {fmt(g)} | "
                        + (f"{statistics.mean(b['beam'] for b, _ in pairs):.2f} / "
                           f"{statistics.mean(a['beam'] for _, a in pairs):.2f} | {fmt(beam)} |" if beam else "n/a | n/a |"))
    body = "\n".join([
        "## Checkpoint averaging: the last 5 epochs' mean against the best epoch\n",
        f"`{command_line()}`\n",
        "Each run's `checkpoint_avg.pt` (`train.average 5`, `average_of: last`: the mean of its last 5 epochs' "
        "weights) against its `checkpoint_best.pt` (the epoch of lowest dev WER), test WER greedy and with the "
        "setting's LM (alpha/beta tuned on dev for each checkpoint). Differences: average minus best, paired by "
        "run, mean ± standard error over the seeds.\n",
        "| setting | runs | seeds | greedy: best / average | average - best | LM: best / average | average - best |",
        "|---|---|---|---|---|---|---|",
        *rows,
        *([f"\nRuns without an average (not shown): {', '.join(missing)}."] if missing else []),
    ])
    write_section(args.section, body)
    print(body)


if __name__ == "__main__":
    main()
