"""Budgets nobody has to guess (#46 item 4): each shipped config names a maximum budget (`train.epochs`) and stops
earlier on a flat dev curve (`train.patience`). Does that patience keep the figures of the runs the docs quote? A
run stops after `patience` dev evaluations in a row without a new best; its figures are those of its best-dev
checkpoint, so they stand wherever the stop would have come at or after that checkpoint's epoch. From each run's
metrics.jsonl (dev WER and CER per evaluation, counted as the trainer counts them): its best epoch, the longest run of evaluations without a new best
before it (the smallest patience that keeps it is one more), where the config's patience would have stopped it
and the epochs that saves.

    python benchmarks/patience.py [--study benchmarks/patience.yaml]

Exits non-zero when a config's patience would have changed a run's best checkpoint: then the figures would not
come from that config. `benchmarks/efficacy.py` (and so robustness.py) reuses a finished run whose config differs
only in a patience that keeps its best checkpoint (`keeps_best`).
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import yaml


def evaluations(run: Path) -> list[dict]:
    """The run's dev evaluations in order, each {epoch, wer, cer, since_best, best}, counted as the trainer counts
    them (`Trainer._track_best`: the best is the lowest (WER, CER), a tie a new best too, written to
    checkpoint_best.pt; patience counts strict improvements only); [] where it has none."""
    f = run / "metrics.jsonl"
    if not f.is_file():
        return []
    recs = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    out, best, since = [], (float("inf"), float("inf")), 0
    for r in recs:
        if r.get("event") != "epoch" or "dev_wer" not in r:
            continue
        score = (r["dev_wer"], r.get("dev_cer", 0.0))
        since = 0 if score < best else since + 1
        out.append({"epoch": r["epoch"], "since_best": since, "best": score <= best})
        best = min(best, score)
    return out


def budget(run: Path) -> int:
    """The run's train.epochs, from its saved config."""
    return int(yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"])


def finished(run: Path) -> bool:
    """A run that ran its budget or was stopped by its patience (not one still training or killed)."""
    f = run / "metrics.jsonl"
    if not f.is_file() or not (run / "config.yaml").is_file():
        return False
    ev = evaluations(run)
    stopped = any(json.loads(line).get("event") == "early_stop" for line in f.read_text().splitlines() if line.strip())
    return bool(ev) and (ev[-1]["epoch"] >= budget(run) or stopped)


def stop_epoch(evals: list[dict], patience: int | None, epochs: int) -> int | None:
    """The epoch after which train.patience `patience` ends the run (None: it runs to `epochs`, or its records end
    first), as training's EarlyStopping decides it."""
    if not patience:
        return None
    return next((r["epoch"] for r in evals if r["since_best"] >= patience and r["epoch"] < epochs), None)


def best_epoch(evals: list[dict]) -> int:
    """The epoch of the run's best-dev checkpoint (the last evaluation that was a best, ties included)."""
    return max(r["epoch"] for r in evals if r["best"])


def longest_wait(evals: list[dict]) -> int:
    """The most evaluations in a row without a strict improvement before the best epoch: a patience above it never
    stops the run before its best checkpoint is written."""
    b = best_epoch(evals)
    return max([r["since_best"] for r in evals if r["epoch"] < b] or [0])


def keeps_best(run: Path, patience: int | None, epochs: int, *, whole: bool = False) -> bool:
    """Would train.patience `patience` (at `epochs` at most) have given `run` the same best checkpoint? The run must
    have its records up to its end: one stopped earlier (by its own patience) keeps only if `patience` stops it no
    later. `whole`: the same run to its last epoch (for what reads later checkpoints, e.g. train.average)."""
    evals = evaluations(run)
    if not evals:
        return False
    last = evals[-1]["epoch"]
    stop = stop_epoch(evals, patience, epochs)
    if stop is None:              # the asked patience never stops it within its records: it must have run them all
        return last >= epochs
    return stop >= last if whole else stop >= best_epoch(evals)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", default="benchmarks/patience.yaml")
    ap.add_argument("--section", default="patience")
    args = ap.parse_args()
    from _common import command_line, write_section
    from offline_kd.config import ExperimentConfig, load_config
    study = yaml.safe_load(open(args.study))
    lines = ["## Patience budgets: do the shipped configs' train.patience keep the quoted runs?\n",
             f"`{command_line()}`\n",
             "Each config's patience (train.patience, dev evaluations without a new "
             "best), against the finished runs the docs quote that were made from it (seeds, overrides such as "
             "model.type; epochs: the run's budget, train.epochs). Best: the epoch of the run's best-dev checkpoint; wait: the longest run of evaluations "
             "without a new best before it (patience must exceed it); stop: where the patience ends the run (— : "
             "it runs the whole budget). Saved: epochs not trained. A row whose best checkpoint the patience would "
             "change is marked **changes**.\n",
             "| config | patience | run | epochs (its budget) | best | wait | stop | saved | best kept |",
             "|---|---|---|---|---|---|---|---|---|"]
    bad, totals = [], [0, 0]
    for entry in study["configs"]:
        patience = load_config(entry["config"], ExperimentConfig).train.patience
        runs = [Path(p) for pattern in entry["runs"] for p in sorted(glob.glob(pattern))]
        runs = [r for r in runs if finished(r)]
        if not runs:
            raise SystemExit(f"patience: {entry['config']}: no finished run matches {entry['runs']}")
        need = 1 + max(longest_wait(evaluations(r)) for r in runs)
        for i, run in enumerate(runs):
            ev, epochs = evaluations(run), budget(run)
            stop = stop_epoch(ev, patience, epochs)
            kept = keeps_best(run, patience, epochs)
            saved = ev[-1]["epoch"] - stop if stop else 0
            totals[0] += saved
            totals[1] += ev[-1]["epoch"]
            if not kept:
                bad.append(f"{entry['config']}: {run}")
            lines.append(f"| {entry['config'] if i == 0 else ''} | {(patience or 'none') if i == 0 else ''} | "
                         f"{run} | {epochs} | {best_epoch(ev)} | {longest_wait(ev)} | {stop or '—'} | {saved} | "
                         f"{'yes' if kept else '**changes**'} |")
        lines.append(f"| | | smallest patience that keeps every run above: {need} | | | | | | |")
    lines.append(f"\nIn all, the patience would have saved {totals[0]} of {totals[1]} epochs trained "
                 f"({100 * totals[0] / max(totals[1], 1):.0f}%); "
                 + ("every best checkpoint, and so every figure, is kept." if not bad else
                    f"{len(bad)} run(s) would change: {'; '.join(bad)}."))
    write_section(args.section, "\n".join(lines))
    if bad:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
