"""Does the default recipe hold on settings nobody tuned it for? Each distillation recipe of a study file against
the CTC-only baseline in every setting of it (a teacher, a cache, how much untranscribed audio), over several
seeds, greedy and with beam search + an n-gram LM; differences paired by seed.

    python benchmarks/robustness.py --study benchmarks/robustness.yaml

* A setting is a baseline config, a distilled config with its `--set` overrides, and the steps it needs first
  (`prepare`: a teacher to train, a cache to dump; run once, skipped when what they create exists).
* A recipe is a list of overrides applied on top of a setting's (the study gives every key it compares, so a change
  of the defaults does not change what a row measures).
* The goal (issue #31): where the teacher's test WER is at least 5 points below the baseline's, the recipe beats the
  baseline by at least 1.5 points, greedy and with the LM, at 2 standard errors: the paired difference's mean plus
  two standard errors is at most -1.5. Where the teacher is not 5 points better, the goal does not apply and the
  column says what `train-student` prints before training.
* Trainings, evaluation and the teacher rows are those of benchmarks/efficacy.py (its functions): resumable run
  directories, finished runs reused, `jobs` trainings at once with cores / jobs threads each.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

import efficacy
from _common import command_line, machine, write_section
from offline_kd.distillation.student import teacher_verdict

GOAL_GAP, GOAL_GAIN = 5.0, 1.5


class Prepared:
    """The study's `prepare` steps, each run once (after the step or steps its `after` names), by whichever job needs it
    first; a job needing a step that is done does not wait, one needing a step that failed fails at once."""

    def __init__(self, steps: dict):
        self.steps, self.locks, self.done, self.failed = steps, {n: threading.Lock() for n in steps}, set(), {}

    def need(self, name: str):
        if name in self.done:
            return
        if name in self.failed:
            raise SystemExit(f"robustness: prepare {name} failed before: {self.failed[name]}")
        step = self.steps[name]
        after = step.get("after") or []
        for first in [after] if isinstance(after, str) else after:      # one step's name, or a list
            self.need(first)
        with self.locks[name]:
            if name in self.done:
                return
            try:
                self._run(name, step)
            except BaseException as exc:
                self.failed[name] = str(exc)[-500:]
                raise
            self.done.add(name)

    @staticmethod
    def _made(path: str) -> bool:
        """A cache counts as made when it is complete (a dump killed half-way left an incomplete one, which the
        dump's own resume finishes); anything else when it exists."""
        if path.endswith(".zarr"):
            if not (Path(path) / "zarr.json").is_file():
                return False
            return bool(json.loads(efficacy.cli("cache", "info", path, "--json").stdout)["complete"])
        return Path(path).exists()

    def _run(self, name: str, step: dict):
        if self._made(step["creates"]):
            return
        for cmd in step["commands"]:
            if isinstance(cmd, str):      # a shell command (OKD: this python's offline-kd)
                print(f"robustness: prepare {name}: {cmd}", flush=True)
                env = {**os.environ, **efficacy.ENV, "OKD": f"{sys.executable} -m offline_kd",
                       "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
                p = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True)
                if p.returncode != 0:
                    raise SystemExit(f"robustness: prepare {name}: `{cmd}` failed:\n{p.stderr[-2000:]}")
                continue
            cmd = [str(c) for c in cmd]
            if step.get("resume_if") and Path(step["resume_if"]).is_file():
                cmd.append("--resume")
            print(f"robustness: prepare {name}: offline-kd {' '.join(cmd)}", flush=True)
            efficacy.cli(*cmd)
        if not step["creates"].endswith(".zarr") and not Path(step["creates"]).exists():
            Path(step["creates"]).write_text("")       # a training's marker: its run finished
        if not self._made(step["creates"]):
            raise SystemExit(f"robustness: prepare {name} ran but {step['creates']} is not complete")


def base_dev(st: dict, seed: int) -> float:
    """The best dev WER of a setting's baseline run (what distill.compare_baseline reads from its checkpoint)."""
    return min(efficacy.dev_curve(Path(f"{st['baseline_runs']}-seed{seed}")))


def stats(d: list[float]) -> tuple[float, float]:
    return statistics.mean(d), (statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else float("nan"))


def mean_or_none(xs: list) -> float | None:
    return None if any(x is None for x in xs) else statistics.mean(xs)


def num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def closed(rs: list, base: list, t: dict) -> str:
    """The share of the teacher's lead over the CTC-only student that the recipe's students close, greedy / with
    the LM, of the seeds' means."""
    def one(key: str) -> str:
        if any(r.get(key) is None for r in rs + base) or t.get(key) is None:
            return "n/a"
        b, r = statistics.mean(x[key] for x in base), statistics.mean(x[key] for x in rs)
        return "n/a" if b - t[key] <= 0 else f"{100 * (b - r) / (b - t[key]):.0f}%"
    return f"{one('test')} / {one('beam')}"


def fmt(mean: float, se: float) -> str:
    return f"{mean:+.2f} ± {se:.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", default="benchmarks/robustness.yaml")
    ap.add_argument("--settings", default="", help="comma-separated setting names (default: all)")
    ap.add_argument("--recipes", default="",
                    help="comma-separated recipe names: only those of each setting's (default: each setting's)")
    ap.add_argument("--finished-only", action="store_true",
                    help="train nothing: the table of the runs that have finished, the others listed as not run")
    ap.add_argument("--section", default="robustness")
    ap.add_argument("--title", default="Robustness: the recipes in settings nobody tuned them for (#31)")
    ap.add_argument("--jobs", type=int, help="trainings at once (default: the study's `jobs`)")
    ap.add_argument("--threads", type=int, help="threads of each (default: cores / jobs)")
    ap.add_argument("--seeds", default="", help="comma-separated seeds: only those of the study's (default: all)")
    args = ap.parse_args()
    study = yaml.safe_load(open(args.study))
    seeds, jobs = study["seeds"], args.jobs or study.get("jobs", 1)
    if args.seeds:
        picked = [int(s) for s in args.seeds.split(",") if s]
        if [s for s in picked if s not in seeds]:
            raise SystemExit(f"robustness: --seeds {args.seeds}: the study's seeds are {seeds}")
        seeds = picked
    threads = args.threads or max(1, (os.cpu_count() or 1) // jobs)
    efficacy.ENV["OMP_NUM_THREADS"] = str(threads)
    lm, alphas, betas = study.get("lm"), study.get("alphas", "0.25,0.5,1"), study.get("betas", "0,1,2")
    recipes = study["recipes"]
    ref = study.get("reference")       # a recipe every other one is also compared with, paired by seed
    if ref is not None and ref not in recipes:
        raise SystemExit(f"robustness: reference {ref}: not a recipe of {args.study}")
    wanted = [s for s in args.settings.split(",") if s]
    unknown = [s for s in wanted if s not in {st["name"] for st in study["settings"]}]
    if unknown:
        raise SystemExit(f"robustness: --settings {', '.join(unknown)}: not in {args.study}")
    settings = [s for s in study["settings"] if not wanted or s["name"] in wanted]
    only = [r for r in args.recipes.split(",") if r]
    if [r for r in only if r not in recipes]:
        raise SystemExit(f"robustness: --recipes {', '.join(r for r in only if r not in recipes)}: not in {args.study}")
    prepared = Prepared(study.get("prepare", {}))

    def run_dir(st, recipe, seed):   # a setting may name a recipe's runs otherwise (`dirs`: runs made before)
        return Path(st["out"]) / f"{st.get('dirs', {}).get(recipe, recipes[recipe]['dir'])}-seed{seed}"

    def student(st, recipe, seed):
        out = run_dir(st, recipe, seed)
        if args.finished_only:
            return out / "checkpoint_best.pt" if (out / "done").is_file() else None
        for p in st.get("prepare", []):
            prepared.need(p)
        return efficacy.train("train-student", st["distill"], out, seed, st.get("sets", []) + recipes[recipe]["sets"])

    def baseline(st, seed):
        out = Path(f"{st['baseline_runs']}-seed{seed}")
        if args.finished_only:
            return out / "checkpoint_best.pt" if (out / "done").is_file() else None
        return efficacy.train("train", st["baseline"], out, seed, st.get("baseline_sets", []))

    def lm_of(st):     # a setting may have its own LM and grid
        return st.get("lm", lm), st.get("alphas", alphas), st.get("betas", betas)

    def setting_runs(st):   # without untranscribed audio every recipe is the first one (they differ only there)
        return list(recipes)[:1] if st.get("untranscribed", True) is False else st.get("recipes", list(recipes))

    def runs_of(st):        # those this invocation trains (--recipes)
        got = setting_runs(st)
        return got if st.get("untranscribed", True) is False else [r for r in got if not only or r in only]

    with ThreadPoolExecutor(jobs) as pool:
        futures, by_path = {}, {}

        def once(path, fn, *a):      # one job per run directory: settings share the baseline's runs
            if str(path) not in by_path:
                by_path[str(path)] = pool.submit(fn, *a)
            return by_path[str(path)]
        # the prepare steps first (one worker) and the settings in the study's order: a student whose setting's
        # steps are not done yet waits for them, one whose steps are done does not
        steps = list(dict.fromkeys(p for st in settings for p in st.get("prepare", [])))
        if not args.finished_only:
            futures[("prepare", None, None)] = pool.submit(lambda: [prepared.need(p) for p in steps])
        for st in settings:
            for seed in seeds:
                futures[(st["name"], "baseline", seed)] = once(f"{st['baseline_runs']}-seed{seed}", baseline, st, seed)
            for recipe in runs_of(st):
                for seed in seeds:
                    futures[(st["name"], recipe, seed)] = once(run_dir(st, recipe, seed), student, st, recipe, seed)
        ckpts = {k: f.result() for k, f in futures.items() if k[0] != "prepare"}
        missing = sorted({f"{k[0]}: {k[1]}" for k, c in ckpts.items() if c is None})
        ckpts = {k: c for k, c in ckpts.items() if c is not None}
        by_name = {st["name"]: st for st in settings}
        evals, by_ckpt = {}, {}
        for k, c in ckpts.items():
            if str(c) not in by_ckpt:
                by_ckpt[str(c)] = pool.submit(efficacy.evaluate, c, yaml.safe_load(open(by_name[k[0]]["distill"]))[
                    "data"]["corpus"], *lm_of(by_name[k[0]]))
            evals[k] = by_ckpt[str(c)]
        results = {k: f.result() for k, f in evals.items()}

    rows, facts = [], []
    for st in settings:
        dcfg = yaml.safe_load(open(st["distill"]))
        corpus = dcfg["data"]["corpus"]
        cache = next((s.split("=", 1)[1] for s in st.get("sets", []) if s.startswith("distill.cache=")),
                     dcfg["distill"]["cache"])
        info = json.loads(efficacy.cli("cache", "info", cache, "--json").stdout)
        if info.get("teacher_adapter") == "ensemble":     # several teachers: the row shows the best member on dev
            meta = json.loads(efficacy.cli("cache", "info", cache, "--json").stdout)
            members = [Path(m["name"].removeprefix("checkpoint ")) for m in meta["teacher_members"]]
            evals = [efficacy.evaluate(m, corpus, *lm_of(st)) for m in members]
            teacher, t = min(zip(members, evals), key=lambda x: x[1]["dev"])
        else:
            teacher = Path(info["teacher_path"])
            t_out = Path(st["out"]) / "teacher_eval.json"     # efficacy.py's, else one beside the teacher
            t = efficacy.evaluate(teacher, corpus, *lm_of(st), t_out if t_out.is_file() else None)
        conf = info["splits"].get("untranscribed", {}).get("confidence") if st.get("untranscribed", True) else None
        # what train-student says before training with distill.compare_baseline set to the baseline's seed-0 run
        said = teacher_verdict(info["teacher_dev"], {"wer": base_dev(st, seeds[0])}) or "no warning"
        base = [results[(st["name"], "baseline", s)] for s in seeds]
        b_greedy, b_beam = statistics.mean(r["test"] for r in base), mean_or_none([r["beam"] for r in base])
        gap = b_greedy - t["test"]
        applies = gap >= GOAL_GAP
        facts.append({"setting": st["name"], "about": st["about"], "teacher": str(teacher), "cache": cache,
                      "teacher_dev": t["dev"], "teacher_test": t["test"], "teacher_beam": t["beam"],
                      "baseline_test": b_greedy, "baseline_beam": b_beam, "gap": gap,
                      "untranscribed_confidence_median": conf["p50"] if conf else None, "train_student_says": said})
        shown = ([r for r in recipes if not only or r in only] if st.get("untranscribed", True) is False
                 else runs_of(st))
        shown = [r for r in shown if all((st["name"], r if r in runs_of(st) else runs_of(st)[0], s) in results
                                         for s in seeds)]
        for i, recipe in enumerate(shown):
            got = recipe if recipe in runs_of(st) else runs_of(st)[0]
            rs = [results[(st["name"], got, s)] for s in seeds]
            dg = stats([r["test"] - b["test"] for r, b in zip(rs, base)])
            db = stats([r["beam"] - b["beam"] for r, b in zip(rs, base)]) if b_beam is not None else None
            worst = max(dg[0] + 2 * dg[1], db[0] + 2 * db[1] if db else -float("inf"))    # the bound that decides
            met = worst <= -GOAL_GAIN
            goal = ((f"met ({worst:+.2f})" if met else f"**missed** ({worst:+.2f})") if applies else
                    (f"n/a: the teacher is only {gap:.1f} points better" if gap > 0 else
                     f"n/a: the teacher is {-gap:.1f} points worse"))
            same = "" if got == recipe else f" (= {got}: no untranscribed audio)"
            vs_ref = ""
            if ref:                       # the paired difference against the study's reference recipe
                # (a setting's `reference_setting`: the reference runs of another, e.g. from another cache)
                rst = by_name.get(st.get("reference_setting", st["name"]))
                sref = (rst or st).get("reference", ref)          # (a setting may name its own)
                rg = None if rst is None else sref if sref in setting_runs(rst) else setting_runs(rst)[0]
                if recipe == sref and rst is st:
                    vs_ref = " — |"
                elif rg is None or any((rst["name"], rg, s) not in results for s in seeds):
                    vs_ref = " not run |"
                else:
                    rr = [results[(rst["name"], rg, s)] for s in seeds]
                    vg = stats([r["test"] - q["test"] for r, q in zip(rs, rr)])
                    vb = (stats([r["beam"] - q["beam"] for r, q in zip(rs, rr)]) if b_beam is not None else None)
                    vs_ref = f" {fmt(*vg)} / {fmt(*vb) if vb else 'n/a'} |"
            rows.append(f"| {st['name'] if i == 0 else ''} | "
                        + (f"{t['test']:.2f} / {num(t['beam'])} (dev {t['dev']:.2f})" if i == 0 else "") + " | "
                        + (f"{b_greedy:.2f} / {num(b_beam)}" if i == 0 else "") + " | "
                        + (f"{conf['p50']:.3f}" if i == 0 and conf else "") + " | "
                        + f"{recipes[recipe]['label']}{same} | "
                        + f"{statistics.mean(r['test'] for r in rs):.2f} / {num(mean_or_none([r['beam'] for r in rs]))} | "
                        + f"{fmt(*dg)} | {fmt(*db) if db else 'n/a'} | {closed(rs, base, t)} |{vs_ref} {goal} |")
    for f in facts:
        print(json.dumps(f), flush=True)
    for k, r in results.items():
        print(json.dumps({"setting": k[0], "run": k[1], "seed": k[2], **r}), flush=True)

    head = ("| setting | teacher test WER greedy / beam + LM | CTC-only student greedy / beam + LM (mean) | "
            "teacher confidence on the untranscribed split (median, every cached utterance) | recipe | student greedy / beam + LM (mean) | "
            "greedy vs baseline (paired, ± SE) | beam + LM vs baseline | gap closed, greedy / LM | "
            + (f"greedy / beam + LM vs {recipes[ref]['label']} (paired) | " if ref else "") + "goal |")
    lines = [f"## {args.title}\n", f"`{command_line()}`\n",
             f"Machine: {machine()}; {jobs} training run(s) at a time with {threads} thread(s) each. Study "
             f"`{args.study}`, seeds {seeds}, WER in % of each run's best-dev checkpoint on the test split; beam "
             f"search: width 32, LM `{lm}` (a setting may name its own), alpha in {{{alphas}}} and beta in "
             f"{{{betas}}} chosen on dev for every model. Differences: the recipe's WER minus the baseline's, paired by seed, mean ± standard error. "
             f"Goal: where the teacher's test WER is at least {GOAL_GAP:g} points below the baseline's, mean + 2 SE "
             f"<= -{GOAL_GAIN:g} greedy and with the LM; the goal column gives the larger of the two bounds. Gap "
             f"closed: (CTC-only WER - distilled WER) / (CTC-only WER - teacher WER), of the means (n/a where the "
             f"teacher is not better than the CTC-only student).\n",
             "Settings:\n"]
    def own_lm(st):     # a setting's own LM and grid, where it has one
        got = lm_of(st)
        return "" if got == (lm, alphas, betas) else (f"; LM `{got[0]}`, alpha in {{{got[1]}}}, beta in "
                                                       f"{{{got[2]}}}")
    lines += [f"- **{st['name']}**: {st['about']}; cache `{f['cache']}`, teacher `{f['teacher']}`{own_lm(st)}."
              for st, f in zip(settings, facts)]
    lines += ["", head, "|" + "---|" * (head.count("|") - 1)] + rows
    lines += ["", "What `train-student` prints before training with `distill.compare_baseline` set to the baseline's "
                  "seed-0 run (`offline_kd.distillation.student.teacher_verdict`, the teacher's dev WER recorded in "
                  "the cache against the baseline's best dev WER):", ""]
    lines += [f"- {f['setting']}: teacher dev {f['teacher_dev']:.2f}%, baseline dev "
              f"{base_dev(st, seeds[0]):.2f}%: {f['train_student_says']}" for st, f in zip(settings, facts)]
    if missing:
        lines.append("\nNot finished when this table was written (`--finished-only`), left out: " + "; ".join(missing)
                     + ".")
    lines.append("\nRecipes (overrides of each setting's distilled config): "
                 + "; ".join(f"{r['label']}: `{' '.join(r['sets'])}`" for r in recipes.values()) + ".")
    write_section(args.section, "\n".join(lines))


if __name__ == "__main__":
    main()
