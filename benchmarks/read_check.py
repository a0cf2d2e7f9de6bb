"""Cost of `distill.verify_reads` (on by default): every cached utterance's crc32 and every utterance's input
features against their stored sha256, checked when train-student reads them.

    python benchmarks/read_check.py                       # self-contained: builds both settings in a temp dir
    python benchmarks/read_check.py --cache cache/demo_teacher.zarr --corpus data/demo \
        --train-config configs/demo/distill.yaml --section read-check-mine   # one cache you already have

Self-contained, it builds two settings into --work (a temporary directory unless given; a given one is reused on
the next run, step by step) and measures both:

- tiny: the tests' geometry (16-dim features, 8 word units + blank, 2 speakers, 2-4 words per utterance; 600
  transcribed + 2,400 untranscribed utterances), a teacher 2 x BiLSTM(32) trained 1 epoch, the student
  2 x BiLSTM(24);
- demo: `scripts/demo.sh`'s corpus (its `offline-kd data synth` command), its teacher (configs/demo/teacher.yaml)
  trained 1 epoch instead of 16 (the checks' work depends on how many bytes are read, not on their values), the
  student of configs/demo/distill.yaml.

Both caches are dumped with configs/demo/dump.yaml (float16 log-probs and hidden states, zstd 3; layers 2 and 4, or
1 and 2 for the 2-layer tiny teacher) over train, untranscribed and dev, and both students use
configs/demo/distill.yaml's recipe (transcribed + untranscribed audio, batch 16).

Read path: the training data path train-student uses (`DistillBatchDataset` over the transcribed and untranscribed
splits, `SortedRunBatchSampler` batches, features read + cached targets decoded, the hidden layers the recipe maps),
in three modes: neither check, the crc32 only, the crc32 and the features' sha256 (`distill.verify_reads: true`).
Each run is one pass over the batches in which every batch is read by the three modes in turn (the order rotating),
so that all three see the same machine state; one untimed warm-up run first. Reports the median input frames/s of
each mode over the runs and their ratios. Epoch: one epoch of train-student (`train.epochs: 1`, the training
frames/s of its epoch record, before the dev evaluation) in the same three modes, their order rotating from run to
run, after one untimed epoch; "crc32 only" is train-student with the features' check switched off by the
benchmark (`SplitReader.verify_reads` made a no-op: no setting does that). Torch runs on --threads threads (1, as
scripts/demo.sh trains its student); the builds' own commands use torch's default.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import yaml

from _common import Timer, command_line, machine, median, write_section
from offline_kd.cache.reader import TeacherCache
from offline_kd.data.corpus import ConcatSplitReader, Corpus, SplitReader
from offline_kd.data.distill_dataset import DistillBatchDataset
from offline_kd.data.sampler import SortedRunBatchSampler

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "configs" / "demo"
MODES = ("neither", "crc32", "crc32+sha256")
LABELS = {"neither": "neither check (`distill.verify_reads: false`)",
          "crc32": "cached targets' crc32 only",
          "crc32+sha256": "crc32 + features' sha256 (`distill.verify_reads: true`, the default)"}
# scripts/demo.sh's corpus
DEMO_SYNTH = ["--num-train", "600", "--num-untranscribed", "2400", "--untranscribed-speakers", "40",
              "--num-teacher-train", "1800", "--teacher-speakers", "40", "--num-dev", "150", "--num-test", "150",
              "--num-units", "200", "--phones-per-unit", "2", "--num-lm-sentences", "20000"]
# the tests' tiny corpus (tests/helpers.py tiny_spec) with the demo's number of training utterances
TINY_SPEC = {"seed": 3, "num_train": 600, "num_untranscribed": 2400, "num_dev": 50, "num_test": 16,
             "feature_dim": 16, "num_units": 8, "num_phones": 8, "phones_per_unit": 1, "num_speakers": 2,
             "test_speakers": 0, "min_words": 2, "max_words": 4, "snr_db": (30.0, 40.0), "speaker_distortion": 0.05}
TINY_TEACHER = {"input_dim": 16, "hidden_dim": 32, "num_layers": 2, "num_classes": 9, "dropout": 0.0}
TINY_STUDENT = {"input_dim": 16, "hidden_dim": 24, "num_layers": 2, "num_classes": 9, "dropout": 0.0}


def okd(args: list[str], log: Path) -> None:
    """One `offline-kd` command, its output appended to `log`."""
    with open(log, "a") as f:
        f.write(f"$ offline-kd {' '.join(args)}\n")
        f.flush()
        r = subprocess.run([sys.executable, "-m", "offline_kd.cli", *args], check=False, stdout=f,
                           stderr=subprocess.STDOUT)
    if r.returncode:
        tail = "".join(log.read_text().splitlines(keepends=True)[-20:])
        sys.exit(f"{tail}read_check.py: `offline-kd {' '.join(args)}` failed (output above, in {log})")


def build(size: str, work: Path, log) -> dict:
    """Corpus, 1-epoch teacher and float16 cache of one setting under work/size (steps already done are kept);
    returns {"corpus", "cache", "train": the student's config dict}."""
    d = work / size
    d.mkdir(parents=True, exist_ok=True)
    corpus, teacher, cache, logfile = d / "corpus", d / "teacher", d / "cache.zarr", d / "build.log"
    t0 = time.perf_counter()
    if not (corpus / "corpus.json").is_file():
        if size == "demo":
            okd(["data", "synth", "--overwrite", "--out", str(corpus), *DEMO_SYNTH], logfile)
        else:
            from offline_kd.data.synth import SynthSpec, write_synth_corpus
            write_synth_corpus(corpus, SynthSpec(**TINY_SPEC), log=lambda *_: None)
    sets = ["--set", "train.epochs=1", "--set", f"data.corpus={corpus}", "--set", f"train.output_dir={teacher}",
            "--set", "train.progress=false"]
    teacher_cfg = DEMO / "teacher.yaml"
    if size == "tiny":
        sets += ["--set", "data.train_split=train"] + [x for k, v in TINY_TEACHER.items()
                                                        for x in ("--set", f"model.{k}={v}")]
    if not (teacher / "checkpoint_best.pt").is_file():
        okd(["train", "--config", str(teacher_cfg), *sets], logfile)
    if not (cache / "zarr.json").is_file():
        okd(["dump-teacher", "--config", str(DEMO / "dump.yaml"), "--set", f"dump.teacher={teacher}/checkpoint_best.pt",
             "--set", f"dump.corpus={corpus}", "--set", f"dump.output={cache}", "--set", "dump.progress=false"]
            + (["--set", "dump.layers=[1,2]"] if size == "tiny" else []), logfile)
    student = yaml.safe_load((DEMO / "distill.yaml").read_text())
    if size == "tiny":
        student["model"] = dict(TINY_STUDENT)
        student["distill"]["layer_mapping"] = {1: 1, 2: 2}
    log(f"{size}: built in {time.perf_counter() - t0:.0f} s ({d})")
    return {"corpus": str(corpus), "cache": str(cache), "train": student}


@contextmanager
def feature_check(on: bool):
    """Without `on`, train-student's readers ignore verify_reads() (its crc32 stays as configured)."""
    if on:
        yield
        return
    with mock.patch.object(SplitReader, "verify_reads", lambda self, on=True: None), \
            mock.patch.object(ConcatSplitReader, "verify_reads", lambda self, on=True: None):
        yield


def read_path(corpus: Corpus, cache_path: str, train: dict, mode: str) -> DistillBatchDataset:
    """train-student's training data path (transcribed + untranscribed utterances) with `mode`'s checks."""
    d = train.get("distill", {})
    split = train.get("data", {}).get("train_split", "train")
    names = [split] + list(d.get("untranscribed_splits") or [])
    layers = {int(t) for t in (d.get("layer_mapping") or {}).values()} if d.get("gamma") else set()
    cache = TeacherCache(cache_path, verify_reads=mode != "neither")
    readers = [corpus.split(n) for n in names]        # a reader of its own per mode
    for r in readers:
        r.verify_reads(mode == "crc32+sha256")
    return DistillBatchDataset(readers[0], corpus.vocab, cache.split(names[0]), layers=layers,
                               untranscribed=[(r, cache.split(n)) for r, n in zip(readers[1:], names[1:])])


def read_run(datasets: dict, batches: list, run: int) -> dict:
    """One pass over `batches`, each batch read by every mode's data path in turn (the order rotating from batch
    to batch and run to run, so that no mode always reads first), side by side at the same moment: the machine's
    load, which drifts over seconds on a shared machine, weighs on every mode alike. {mode: input frames/s}."""
    seconds = dict.fromkeys(datasets, 0.0)
    frames = 0
    modes = list(datasets)
    for k, b in enumerate(batches):
        for j in range(len(modes)):
            mode = modes[(j + k + run) % len(modes)]
            with Timer() as t:
                n = int(datasets[mode][b]["feature_lengths"].sum())
            seconds[mode] += t.seconds
        frames += n
    return {m: frames / s for m, s in seconds.items()}


def epoch(corpus: str, cache: str, train: dict, mode: str) -> float:
    """The training frames/s of one train-student epoch (its epoch record, before the dev evaluation)."""
    from offline_kd.commands import train_student
    from offline_kd.config import ExperimentConfig, build_dataclass
    with tempfile.TemporaryDirectory() as tmp:
        d = copy.deepcopy(train)
        d["train"].update(epochs=1, output_dir=tmp, progress=False)
        d["distill"].update(cache=cache, verify_reads=mode != "neither", compare_baseline=None)
        d["data"]["corpus"] = corpus
        with feature_check(mode == "crc32+sha256"), redirect_stdout(sys.stderr):   # its epoch line
            train_student.run(build_dataclass(ExperimentConfig, d), log=lambda *_: None)
        rows = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
        return next(x for x in rows if x["event"] == "epoch")["frames_per_second"]


def measure(name: str, corpus_dir: str, cache_path: str, train: dict | None, args, log) -> dict:
    corpus = Corpus(corpus_dir)
    batch = (train or {}).get("data", {}).get("batch_size", args.batch_size)
    spec = train or {"distill": {"untranscribed_splits": args.untranscribed}}
    datasets = {mode: read_path(corpus, cache_path, spec, mode) for mode in MODES}
    batches = list(SortedRunBatchSampler(datasets["neither"].lengths, np.arange(len(datasets["neither"])), batch,
                                         seed=0))
    read_run(datasets, batches, 0)                       # warm-up: page cache, zarr and h5py first reads
    reads = {m: [] for m in MODES}
    for r in range(args.runs):
        for mode, fps in read_run(datasets, batches, r).items():
            reads[mode].append(fps)
        log(f"{name}: read run {r + 1}/{args.runs}: " + ", ".join(f"{m} {reads[m][-1]:,.0f}" for m in MODES))
    epochs = {m: [] for m in MODES}
    n_epochs = epoch_runs(args.epoch_runs, name)
    if train is not None and n_epochs:
        epoch(corpus_dir, cache_path, train, "neither")  # warm-up: a process's first epoch runs slower
        for r in range(n_epochs):
            for mode in MODES[r % 3:] + MODES[:r % 3]:   # the order rotating from run to run
                epochs[mode].append(epoch(corpus_dir, cache_path, train, mode))
            log(f"{name}: epoch run {r + 1}/{n_epochs}: "
                + ", ".join(f"{m} {epochs[m][-1]:,.0f}" for m in MODES))
    ds = datasets["neither"]
    return {"name": name, "reads": reads, "epochs": epochs, "cache": TeacherCache(cache_path), "corpus": corpus,
            "train": train, "frames": int(ds.lengths.sum()), "utts": len(ds)}


def epoch_runs(spec: str, name: str) -> int:
    """--epoch-runs: N for every setting, or SIZE=N,... (a setting not named: the first N given)."""
    if "=" not in spec:
        return int(spec)
    runs = dict(x.split("=") for x in spec.split(","))
    return int(runs.get(name, next(iter(runs.values()))))


def _ratio(runs: dict, mode: str) -> float:
    """Median over the runs of mode / neither, each run's pair measured side by side."""
    return median([m / n for m, n in zip(runs[mode], runs["neither"])])


def _rows(results: list[dict], key: str) -> list[str]:
    out = []
    for res in results:
        runs = res[key]
        if not runs["neither"]:
            continue
        for mode in MODES:
            out.append(f"| {res['name']} | {LABELS[mode]} | {median(runs[mode]):,.0f} | **{_ratio(runs, mode):.3f}x** "
                       f"| {', '.join(f'{x:,.0f}' for x in runs[mode])} |")
    return out


def _share(runs: dict) -> tuple[float, float]:
    """(crc32's, sha256's) cost in % of the unchecked frames/s, from the paired ratios: 1 - crc32 / neither and
    crc32 / neither - both / neither."""
    c, s = _ratio(runs, "crc32"), _ratio(runs, "crc32+sha256")
    return 100 * (1 - c), 100 * (c - s)


def report(results: list[dict], args, built: str, seconds: float) -> str:
    geometry = []
    for res in results:
        cache = res["cache"]
        model = (res["train"] or {}).get("model", {})
        codec = cache.meta.codecs["log_probs"]["name"]
        geometry.append(f"{res['name']}: {res['corpus'].feature_dim}-dim features, "
                        f"{len(res['corpus'].vocab)} classes, cache log-probs `{codec}`, hidden layers "
                        f"{sorted(cache.layer_dims)} of {sorted(set(cache.layer_dims.values()))} dims"
                        + (f", student {model['num_layers']} x BiLSTM({model['hidden_dim']})" if model else "")
                        + f"; {res['utts']:,} utterances, {res['frames']:,} input frames read per pass")
    body = (f"`{command_line()}`\n\n{machine()}. {built}\n\n" + "; ".join(geometry) + ".\n\n"
            f"Read path (training data path only, batch 16, transcribed + untranscribed utterances; each batch "
            f"read by the three modes in turn, rotating), median of {args.runs} runs:\n\n"
            "| setting | checks | input frames/s (median) | vs neither (median of the runs' ratios) | runs |\n"
            "|---|---|---|---|---|\n"
            + "\n".join(_rows(results, "reads")))
    if any(r["epochs"]["neither"] for r in results):
        body += ("\n\nOne train-student epoch (its training frames/s, before the dev evaluation), median of "
                 + ", ".join(f"{len(r['epochs']['neither'])} ({r['name']})" for r in results)
                 + " runs per mode, the modes' order rotating from run to run, after one untimed epoch:\n\n"
                 "| setting | checks | training frames/s (median) | vs neither (median of the runs' ratios) | runs |\n"
                 "|---|---|---|---|---|\n"
                 + "\n".join(_rows(results, "epochs")))
    parts = []
    for res in results:
        c, s = _share(res["reads"])
        text = f"{res['name']}: the crc32 {c:.1f}% and the sha256 a further {s:.1f}% of the read path's"
        if res["epochs"]["neither"]:
            ec, es = _share(res["epochs"])
            text += f", {ec:.1f}% and {es:.1f}% of an epoch's"
        parts.append(text)
    body += ("\n\nThroughput each check costs (from the ratios above, as a share of the unchecked frames/s; a "
             "negative share is noise): " + "; ".join(parts)
             + f". Whole benchmark: {seconds / 60:.1f} min.")
    return body


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=None, help="build the settings here and keep them (default: a temp dir)")
    ap.add_argument("--sizes", default="tiny,demo", help="self-contained settings to build and measure")
    ap.add_argument("--cache", default=None, help="measure this cache instead (with --corpus)")
    ap.add_argument("--corpus", default=None)
    ap.add_argument("--train-config", default=None,
                    help="with --cache: the student's config (its splits, layers, batch size; also times epochs)")
    ap.add_argument("--untranscribed", nargs="*", default=[],
                    help="with --cache and no --train-config: untranscribed splits read beside train")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--runs", type=int, default=7, help="read-path runs per mode")
    ap.add_argument("--epoch-runs", default="tiny=9,demo=7",
                    help="train-student epochs per mode: N, or SIZE=N,... (0: none; with --cache: the first N)")
    ap.add_argument("--section", default="read-check-float16")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads here (scripts/demo.sh trains the student with OMP_NUM_THREADS=1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    def log(msg):
        print(msg, file=sys.stderr, flush=True)
    if args.cache:
        if not args.corpus:
            ap.error("--cache needs --corpus")
        train = yaml.safe_load(Path(args.train_config).read_text()) if args.train_config else None
        results = [measure(Path(args.cache).name, args.corpus, args.cache, train, args, log)]
        built = f"Cache `{args.cache}`, corpus `{args.corpus}`" + (f", student `{args.train_config}`"
                                                                   if args.train_config else "") + "."
    else:
        tmp = None
        if args.work is None:
            tmp = tempfile.TemporaryDirectory(prefix="read_check_")
        work = Path(args.work or tmp.name)
        results = []
        for size in args.sizes.split(","):
            s = build(size, work, log)
            results.append(measure(size, s["corpus"], s["cache"], s["train"], args, log))
        what = {"tiny": "*tiny* = the tests' corpus geometry (tests/helpers.py `tiny_spec`: 16-dim features, 8 word "
                        "units, 2-4 words per utterance) with 600 transcribed + 2,400 untranscribed utterances, "
                        "teacher 2 x BiLSTM(32) trained 1 epoch, student 2 x BiLSTM(24)",
                "demo": "*demo* = scripts/demo.sh's corpus, its teacher (configs/demo/teacher.yaml, 4 x BiLSTM(192)) "
                        "trained 1 epoch instead of 16, its student (configs/demo/distill.yaml, 4 x BiLSTM(64))"}
        built = ("Built by the script: " + "; ".join(what[x] for x in args.sizes.split(",")) + ". Caches dumped "
                 "with configs/demo/dump.yaml (float16 log-probs and hidden states, zstd 3: the demo's cache) over "
                 "train, untranscribed and dev; students trained with configs/demo/distill.yaml's recipe "
                 "(transcribed + untranscribed audio, batch 16, no hidden-state loss; the crc32 still covers every "
                 "stored array of an utterance, hidden states included).")
        if tmp is not None:
            for res in results:
                res["cache"].meta  # noqa: B018 - read before the directory goes
    write_section(args.section, report(results, args, built, time.perf_counter() - start))
    if not args.cache and tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
