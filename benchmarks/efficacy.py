"""Does distillation beat CTC-only training? The CTC-only baseline and each distillation variant, trained over
several seeds with the same student, data, augmentation and epoch budget, evaluated greedy and with beam search +
an n-gram LM (alpha and beta tuned on dev for every model); differences to the baseline paired by seed.

    python benchmarks/efficacy.py --baseline configs/demo/baseline.yaml --distill configs/demo/distill.yaml \
        --variant "labelled only, same loss=distill.untranscribed_splits=[]" --baseline-lrs 0.0015,0.003,0.005 \
        --seeds 0,1,2 --jobs 2 --lm data/demo/lm.arpa --out runs/efficacy

* The teacher is the one of the cache that `--distill` names; its row is evaluated the same way.
* `--baseline-lrs`: the baseline is first trained with seed `seeds[0]` at each learning rate; the one with the best
  dev WER is used for every seed (the distilled students keep their config's rate, one of those tried), so the
  baseline is tuned at least as carefully as the students.
* `--variant NAME=key=value[;key=value...]`: a distilled student with those `--set` overrides of `--distill`.
* Convergence: for every run the table gives how much its best dev WER still improved in the last quarter of its
  epochs (0 = flat); a run that still gains clearly there was stopped too early.
* Every training is a separate, resumable process into --out/NAME-seedS; finished runs are reused, so a rerun with
  more seeds trains only the new ones. `--jobs N` runs N trainings at once with cores / N threads each; keep it fixed
  across reruns (the thread count changes the floating-point reduction order and so the exact trajectory).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from _common import command_line, machine, write_section
from patience import keeps_best
from offline_kd.config import ExperimentConfig, load_config, to_dict

ENV = {}   # environment overrides for the training processes (OMP_NUM_THREADS with --jobs)


def cli(*args):
    p = subprocess.run([sys.executable, "-m", "offline_kd", *args], capture_output=True, text=True,
                       env={**os.environ, **ENV})
    if p.returncode != 0:
        raise SystemExit(f"offline-kd {' '.join(args)} failed:\n{p.stderr[-2000:]}")
    return p


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "layer_mapping":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_mismatch(config: str, out: Path, seed: int, sets: list[str]) -> list[str]:
    """The keys on which the run in `out` (its saved, resolved config.yaml) differs from what `config` with `sets`
    asks now: a finished run is reused by its directory, so a changed default must not pass for it. Keys the saved
    config lacks (options added since) are not compared; nor is what only places or shows the run, nor checkpoint
    averaging (train.average, average_of: it adds checkpoint_avg.pt and changes no other checkpoint), nor a
    train.patience that would have stopped the run no earlier than its best checkpoint (benchmarks/patience.py)."""
    saved = out / "config.yaml"
    if not saved.is_file():
        return []
    want = _flat(to_dict(load_config(config, ExperimentConfig, [f"train.output_dir={out}", f"train.seed={seed}",
                                                                    *sets])))
    have = _flat(yaml.safe_load(saved.read_text()))
    if want.get("distill.pseudo_labels") == "auto" != have.get("distill.pseudo_labels"):   # as train-student resolves it
        want["distill.pseudo_labels"] = auto_labels(want.get("distill.cache"), want.get("distill.untranscribed_splits"),
                                                    want.get("distill.storage_options") or None)
    skip = {"train.output_dir", "train.progress", "train.device", "data.num_workers", "train.average",
            "train.average_of"}
    if str(have.get("train.epochs")) == str(want["train.epochs"]) and keeps_best(
            out, want["train.patience"], want["train.epochs"], whole=bool(want.get("train.average"))):
        skip.add("train.patience")     # a patience that would have ended the run with the same best checkpoint
    return [f"{k}: {have[k]!r} there, {want[k]!r} asked" for k in sorted(have.keys() & want.keys())
            if k not in skip and str(have[k]) != str(want[k])
            and not (k == "distill.cache" and same_targets(have[k], want[k]))]


def auto_labels(cache: str | None, splits: list | None, storage_options: dict | None = None) -> str:
    """distill.pseudo_labels auto as train-student resolves it for this cache and untranscribed splits (each of
    their views where the cache has views of them)."""
    from offline_kd.cache.reader import TeacherCache
    from offline_kd.data.views import view_name
    from offline_kd.distillation.student import auto_pseudo_labels
    if not cache or not splits:
        return "greedy"
    try:
        c = TeacherCache(cache, storage_options, require_complete=False, verify_reads=False)
    except Exception:              # no cache there (yet): train-student would refuse it before resolving anything
        return "greedy"
    views = c.meta.views or {}
    k = len(views.get("views") or [])
    names = [m for n in splits for m in ([view_name(n, i) for i in range(k)]
                                         if k and n in (views.get("splits") or []) else [n])]
    return auto_pseudo_labels([c.split(n) if n in c.splits else None for n in names])


def same_targets(a: str, b: str) -> bool:
    """Two caches of the same teacher, vocabulary, codecs and dump settings (their identity) hold the same
    targets, whatever else one of them has (a confidence, an LM N-best)."""
    try:
        ids = [json.loads(cli("cache", "info", c, "--json").stdout)["identity_sha256"] for c in (a, b)]
    except SystemExit:
        return False
    return ids[0] == ids[1]


def train(kind: str, config: str, out: Path, seed: int, sets: list[str]) -> Path:
    bad = config_mismatch(config, out, seed, sets)
    if bad:
        raise SystemExit(f"efficacy: {out} was trained with another config than {config} + {sets} now gives "
                         f"({'; '.join(bad)}): move it away to retrain, or pin those keys in the study")
    if not (out / "done").is_file():
        args = [kind, "--config", config, "--set", f"train.output_dir={out}", "--set", f"train.seed={seed}",
                "--set", "train.progress=false", *[a for s in sets for a in ("--set", s)]]
        if (out / "checkpoint_last.pt").is_file():
            args.append("--resume")
        cli(*args)
        (out / "done").write_text("")
    return out / "checkpoint_best.pt"


def dev_curve(run: Path) -> list[float]:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["dev_wer"] for r in recs if r.get("event") == "epoch" and "dev_wer" in r]


def late_gain(curve: list[float]) -> float:
    """How much the best dev WER improved during the last quarter of the epochs (points, >= 0)."""
    cut = max(1, len(curve) - max(1, len(curve) // 4))
    return max(0.0, min(curve[:cut]) - min(curve))


def evaluate(ckpt: Path, corpus: str, lm: str | None, alphas: str, betas: str, out: Path | None = None) -> dict:
    """dev greedy, test greedy and (with an LM) test beam + LM with alpha/beta tuned on dev (kept in `out`)."""
    out = out or ckpt.parent / "efficacy_eval.json"
    if not out.is_file() or json.loads(out.read_text()).get("lm") != lm:
        if lm:
            cli("tune-lm", "--checkpoint", str(ckpt), "--corpus", corpus, "--lm", lm, "--alphas", alphas,
                "--betas", betas, "--out", str(out))
        else:
            res = {}
            for split in ("dev", "test"):
                r = json.loads(cli("evaluate", "--checkpoint", str(ckpt), "--corpus", corpus, "--split", split,
                                   "--json").stdout.strip().splitlines()[-1])
                res[split] = r["wer"]
            out.write_text(json.dumps({"lm": None, "dev_greedy_wer": res["dev"], "test": {"greedy_wer": res["test"]}}))
    r = json.loads(out.read_text())
    return {"dev": r["dev_greedy_wer"], "test": r["test"]["greedy_wer"],
            "beam": r["test"].get("beam_wer"), "alpha": r["test"].get("alpha"), "beta": r["test"].get("beta")}


def paired(xs: list[float], ys: list[float]) -> str:
    d = [x - y for x, y in zip(xs, ys)]
    if len(d) < 2:
        return f"{d[0]:+.2f}"
    se = statistics.stdev(d) / len(d) ** 0.5
    return f"{statistics.mean(d):+.2f} ± {se:.2f}" + (" *" if abs(statistics.mean(d)) > 2 * se else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=True, help="CTC-only student config (offline-kd train)")
    ap.add_argument("--distill", required=True, help="distilled student config (offline-kd train-student)")
    ap.add_argument("--variant", action="append", default=[], help="NAME=key=value[;key=value...] (repeatable)")
    ap.add_argument("--baseline-lrs", default="", help="learning rates tried for the baseline (seed seeds[0])")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--jobs", type=int, default=1, help="trainings run at once (each with cores / jobs threads)")
    ap.add_argument("--lm", default=None, help="KenLM model for beam search (alpha, beta tuned on dev per model)")
    ap.add_argument("--alphas", default="0.25,0.5,1")
    ap.add_argument("--betas", default="0,1,2")
    ap.add_argument("--out", default="runs/efficacy")
    ap.add_argument("--section", default="efficacy", help="section of docs/benchmarks.md to write")
    ap.add_argument("--title", default="Efficacy: does distillation beat CTC-only training?",
                    help="the section's heading")
    args = ap.parse_args()
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    ENV["OMP_NUM_THREADS"] = str(threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    dcfg = yaml.safe_load(open(args.distill))
    corpus = dcfg["data"]["corpus"]
    info = json.loads(cli("cache", "info", dcfg["distill"]["cache"], "--json").stdout)
    teacher = Path(info["teacher_path"])
    variants = {"distilled (default)": []}
    for v in args.variant:
        name, _, sets = v.partition("=")
        variants[name] = [s for s in sets.split(";") if s]

    with ThreadPoolExecutor(args.jobs) as pool:
        lr_note, base_sets, jobs = "", [], {}
        if args.baseline_lrs:     # the sweep first, the students queued behind it, the other baseline seeds last
            lrs = [float(x) for x in args.baseline_lrs.split(",")]
            runs = {lr: pool.submit(train, "train", args.baseline, out / f"baseline-lr{lr:g}-seed{seeds[0]}",
                                    seeds[0], [f"train.lr={lr}"]) for lr in lrs}
        for name, sets in variants.items():
            for s in seeds:
                jobs[(name, s)] = pool.submit(train, "train-student", args.distill, out / f"{slug(name)}-seed{s}",
                                              s, sets)
        if args.baseline_lrs:
            dev = {lr: min(dev_curve(f.result().parent)) for lr, f in runs.items()}
            best_lr = min(dev, key=dev.get)
            base_sets = [f"train.lr={best_lr}"]
            lr_note = (f"Baseline learning rate chosen on dev (seed {seeds[0]}): "
                       + ", ".join(f"{lr:g} -> {w:.2f}%" for lr, w in dev.items()) + f"; used: {best_lr:g}. ")
            base_dir = lambda s: out / f"baseline-lr{best_lr:g}-seed{s}"  # noqa: E731
        else:
            base_dir = lambda s: out / f"baseline-seed{s}"  # noqa: E731
        for s in seeds:
            jobs[("CTC-only baseline", s)] = pool.submit(train, "train", args.baseline, base_dir(s), s, base_sets)
        ckpts = {k: f.result() for k, f in jobs.items()}
        evals = {k: pool.submit(evaluate, c, corpus, args.lm, args.alphas, args.betas) for k, c in ckpts.items()}
        results = {k: f.result() for k, f in evals.items()}
    t_eval = (evaluate(teacher, corpus, args.lm, args.alphas, args.betas, out / "teacher_eval.json")
              if teacher.is_file() else None)
    for (name, s), r in results.items():
        print(json.dumps({"run": name, "seed": s, **r}), flush=True)

    names = ["CTC-only baseline"] + list(variants)
    base = {s: results[("CTC-only baseline", s)] for s in seeds}
    has_lm = args.lm is not None
    head = ("| model | test WER greedy (per seed) | mean | vs baseline (paired, ± SE) |"
            + (" test WER beam + LM (mean) | vs baseline |" if has_lm else "")
            + " dev WER greedy (mean) | dev gain in the last quarter of epochs (mean) |")
    lines = [
        f"## {args.title}\n", f"`{command_line()}`\n",
        f"Machine: {machine()}; {args.jobs} training run(s) at a time with {threads} thread(s) each. Baseline "
        f"`{args.baseline}`, distilled `{args.distill}` (cache `{dcfg['distill']['cache']}`), seeds {seeds}, "
        f"WER in % of each run's best-dev checkpoint. " + lr_note
        + (f"Beam search: width 32, LM `{args.lm}`, alpha in {{{args.alphas}}} and beta in {{{args.betas}}} chosen "
           f"on dev for every model. " if has_lm else "")
        + "Differences are the variant's WER minus the baseline's (negative: better), paired by seed, mean ± "
          "standard error; * marks a difference more than 2 standard errors from 0.\n",
        head, "|" + "---|" * (head.count("|") - 1)]
    if t_eval:
        lines.append(f"| teacher ({teacher}) | {t_eval['test']:.2f} | {t_eval['test']:.2f} | |"
                     + (f" {t_eval['beam']:.2f} | |" if has_lm else "") + f" {t_eval['dev']:.2f} | |")
    for name in names:
        rs = [results[(name, s)] for s in seeds]
        gains = [late_gain(dev_curve(ckpts[(name, s)].parent)) for s in seeds]
        per_seed = ", ".join(f"{r['test']:.2f}" for r in rs)
        row = (f"| {name} | {per_seed} | {statistics.mean(r['test'] for r in rs):.2f} | "
               + ("" if name == names[0] else paired([r["test"] for r in rs], [base[s]["test"] for s in seeds])) + " |")
        if has_lm:
            row += (f" {statistics.mean(r['beam'] for r in rs):.2f} | "
                    + ("" if name == names[0] else paired([r["beam"] for r in rs], [base[s]["beam"] for s in seeds]))
                    + " |")
        row += f" {statistics.mean(r['dev'] for r in rs):.2f} | {statistics.mean(gains):.2f} |"
        lines.append(row)
    lines.append("\nVariants (overrides of the distilled config): "
                 + "; ".join(f"{n}: `{' '.join(v) or '(none)'}`" for n, v in variants.items()) + ".")
    write_section(args.section, "\n".join(lines))


if __name__ == "__main__":
    main()
