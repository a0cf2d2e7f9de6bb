"""Ablations (`offline-kd ablate`): many distillation runs against one cache, resumable, one after another or N at a time.

Ablation config (YAML):

    base: distillation_config.yaml      # a distillation config (path relative to this file) or an inline mapping
    output_dir: runs/ablation
    parallel: 1                         # runs at a time
    grid:                               # cartesian product of dotted keys -> values (optional)
      distill.alpha: [0.5, 0.7]
    runs:                               # explicit variations (optional), each with a name and overrides
      - name: no_feature_matching
        set: {distill.gamma: 0.0}
    evaluate: [dev, test]               # splits evaluated with the best checkpoint (greedy)
    lm: null                            # a KenLM model adds beam-search columns
    lm_alpha: 0.5
    lm_beta: 1.0

Each run is a separate `offline-kd train-student` process (a failure cannot stop the others) writing into
`output_dir/NAME/`; a run with `result.json` is finished and skipped when the ablation is rerun, an interrupted one
resumes from its last checkpoint. The teacher is never loaded: every run reads the cache. Results go to
`results.csv` and `results.md` in `output_dir`, failed runs with their error.
"""

from __future__ import annotations

import copy
import csv
import itertools
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from offline_kd.config import AblationConfig, ExperimentConfig, build_dataclass, read_yaml, set_dotted
from offline_kd.errors import OfflineKDError



def _short(key: str) -> str:
    return key.split(".")[-1]


def _fmt(v) -> str:
    return json.dumps(v, separators=(",", ":")).replace('"', "") if not isinstance(v, (int, float, str)) else str(v)


def expand(spec: AblationConfig) -> list[dict]:
    """-> [{"name", "overrides": {dotted key: value}}] from `grid` and `runs`."""
    out = []
    grid = spec.grid
    if grid:
        keys = list(grid)
        for k in keys:
            if not isinstance(grid[k], list) or not grid[k]:
                raise OfflineKDError(f"ablation grid '{k}' must be a non-empty list")
        for values in itertools.product(*(grid[k] for k in keys)):
            ov = dict(zip(keys, values))
            out.append({"name": ",".join(f"{_short(k)}={_fmt(v)}" for k, v in ov.items()), "overrides": ov})
    for i, r in enumerate(spec.runs):
        if not isinstance(r, dict) or "name" not in r:
            raise OfflineKDError(f"ablation runs[{i}]: needs a 'name' (and 'set' overrides)")
        out.append({"name": str(r["name"]), "overrides": dict(r.get("set") or {})})
    if not out:
        raise OfflineKDError("the ablation has no runs (give 'grid' and/or 'runs')")
    names = [r["name"] for r in out]
    dups = {n for n in names if names.count(n) > 1}
    if dups:
        raise OfflineKDError(f"duplicate ablation run names: {', '.join(sorted(dups))}")
    return out


def _resolved(base: dict, run: dict, outdir: Path) -> dict:
    d = copy.deepcopy(base)
    for k, v in run["overrides"].items():
        set_dotted(d, str(k).split("."), copy.deepcopy(v))
    d.setdefault("train", {})["output_dir"] = str(outdir / run["name"])
    d["train"]["progress"] = False
    return d


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "offline_kd", *args]


def _error(proc: subprocess.CompletedProcess) -> str:
    lines = [l for l in (proc.stderr or "").splitlines() if l.strip()]
    return lines[-1][:300] if lines else f"exit code {proc.returncode}"


def _train_record(rdir: Path) -> dict:
    """The best epoch and the mean training speed of a finished run, from its metrics.jsonl."""
    records = [json.loads(line) for line in (rdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    epochs = [r for r in records if r.get("event") == "epoch"]
    best = [e for e in epochs if e.get("best")]
    fps = [e["frames_per_second"] for e in epochs if "frames_per_second" in e]
    return {"best_epoch": best[-1]["epoch"] if best else None,
            "train_frames_per_second": round(sum(fps) / len(fps), 1) if fps else None}


def _evaluate_splits(row: dict, ckpt: Path, spec: AblationConfig, env: dict | None) -> str | None:
    """`offline-kd evaluate` of `ckpt` on each of spec.evaluate (greedy, and beam + LM with spec.lm), into `row`;
    -> the first error, or None."""
    for split in spec.evaluate:
        ev = ["evaluate", "--checkpoint", str(ckpt), "--split", split, "--json"]
        if spec.lm:
            ev += ["--decoder", "beam", "--lm", spec.lm, "--alpha", str(spec.lm_alpha), "--beta", str(spec.lm_beta),
                   "--compare-greedy"]
        proc = subprocess.run(_cli(*ev), capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            return f"evaluate {split}: {_error(proc)}"
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        if spec.lm:
            row[f"{split}_wer"], row[f"{split}_cer"] = res["greedy_wer"], res["greedy_cer"]
            row[f"{split}_beam_wer"], row[f"{split}_beam_cer"] = res["wer"], res["cer"]
        else:
            row[f"{split}_wer"], row[f"{split}_cer"] = res["wer"], res["cer"]
        row["num_parameters"] = res["num_parameters"]
    return None


def run_one(run: dict, base: dict, spec: AblationConfig, outdir: Path, log, env: dict | None = None) -> dict:
    rdir = outdir / run["name"]
    done = rdir / "result.json"
    if done.is_file():
        res = json.loads(done.read_text())
        res["skipped"] = True
        log(f"[{run['name']}] finished earlier, skipped")
        return res
    rdir.mkdir(parents=True, exist_ok=True)
    cfg_dict = _resolved(base, run, outdir)
    row = {"name": run["name"], "settings": run["overrides"], "status": "failed"}
    try:
        build_dataclass(ExperimentConfig, cfg_dict)
    except OfflineKDError as exc:
        row["error"] = str(exc)
        (rdir / "error.txt").write_text(row["error"] + "\n")
        log(f"[{run['name']}] failed: {row['error']}")
        return row
    cfg_path = rdir / "input_config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg_dict, sort_keys=False))
    args = ["train-student", "--config", str(cfg_path)]
    if (rdir / "checkpoint_last.pt").is_file():
        args.append("--resume")
    log(f"[{run['name']}] training")
    start = time.time()
    proc = subprocess.run(_cli(*args), capture_output=True, text=True, env=env)
    (rdir / "train.log").write_text(proc.stderr)
    if proc.returncode != 0:
        row["error"] = _error(proc)
        (rdir / "error.txt").write_text(row["error"] + "\n")
        log(f"[{run['name']}] failed: {row['error']}")
        return row
    row["train_seconds"] = round(time.time() - start, 1)
    row.update(_train_record(rdir))
    ckpt = rdir / ("checkpoint_best.pt" if (rdir / "checkpoint_best.pt").is_file() else "checkpoint_last.pt")
    error = _evaluate_splits(row, ckpt, spec, env)
    if error:
        row["error"] = error
        log(f"[{run['name']}] failed: {row['error']}")
        return row
    row["status"] = "ok"
    done.write_text(json.dumps(row, indent=2) + "\n")
    log(f"[{run['name']}] done: " + ", ".join(f"{k} {row[k]:.2f}" for k in row if k.endswith("_wer")))
    return row


def write_tables(rows: list[dict], outdir: Path, splits: list[str]) -> str:
    found = {k for r in rows for k in r if k.endswith("_wer") or k.endswith("_cer")}
    metric_keys = [f"{s}_{m}" for s in splits for m in ("wer", "cer", "beam_wer", "beam_cer") if f"{s}_{m}" in found]
    cols = ["name", "status", "settings", *metric_keys, "best_epoch", "train_seconds", "train_frames_per_second",
            "num_parameters", "error"]
    with open(outdir / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            w.writerow([json.dumps(r.get(c)) if c == "settings" else r.get(c, "") for c in cols])
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    lines = ["| " + " | ".join(c.replace("_", " ") for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            if c == "settings":
                v = ", ".join(f"{k}={_fmt(x)}" for k, x in (v or {}).items()) or "(base)"
            cells.append(fmt(v).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    md = "\n".join(lines)
    (outdir / "results.md").write_text(md + "\n")
    return md


def child_env(parallel: int, environ=None, cores: int | None = None) -> dict:
    """The environment of the training processes: with N at a time each gets cores / N CPU threads (N processes of
    all the cores each oversubscribe the CPU: slower, and another floating-point trajectory than one run alone with
    the same thread count), unless OMP_NUM_THREADS is set already."""
    env = dict(os.environ if environ is None else environ)
    if parallel > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (cores or os.cpu_count() or 1) // parallel))
    return env


def run(config_path: str, parallel: int | None = None, log=print) -> dict:
    raw = read_yaml(config_path)
    if not isinstance(raw, dict):
        raise OfflineKDError(f"{config_path}: an ablation config is a mapping (base, runs, grid, ...)")
    spec = build_dataclass(AblationConfig, raw, "ablation")
    base = spec.base
    if isinstance(base, str):
        p = Path(base)
        base = read_yaml(p if p.is_absolute() or p.is_file() else Path(config_path).parent / p)
    if not isinstance(base, dict) or "distill" not in base:
        raise OfflineKDError(f"{config_path}: 'base' must be a distillation config (with a 'distill' section)")
    build_dataclass(ExperimentConfig, base)
    runs = expand(spec)
    outdir = Path(spec.output_dir)
    outdir.mkdir(parents=True, exist_ok=True)
    n = int(parallel or spec.parallel)
    env = child_env(n)
    log(f"{len(runs)} runs into {outdir}, {n} at a time"
        + (f", {env['OMP_NUM_THREADS']} CPU thread(s) each" if "OMP_NUM_THREADS" in env else ""))
    with ThreadPoolExecutor(max_workers=max(1, n)) as pool:
        rows = list(pool.map(lambda r: run_one(r, base, spec, outdir, log, env), runs))
    table = write_tables(rows, outdir, list(spec.evaluate))
    return {"table": table, "rows": rows, "output_dir": str(outdir)}
