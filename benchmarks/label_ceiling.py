"""How far could perfect pseudo-labels take the student? (issue #46) A CTC-only student of the CTC-only baseline's
config trained on the transcribed split and on the untranscribed audio with its TRUE text (which a synthesized
corpus knows), the same utterances and epochs as the distilled student sees, against the distilled student and the
CTC-only one, paired by seed. Its gap closed (as in the robustness study) is what the best possible labels of that
audio would buy this student; the distilled student's is what the teacher's labels and soft targets buy.

    python benchmarks/label_ceiling.py --corpus data/tts_en/corpus --truth data/tts_en/raw/utterances.jsonl \
        --config recipes/tts_en/configs/baseline.yaml --epochs 15 --out runs/ceiling/tts_en \
        --baseline runs/efficacy_tts_en/baseline-lr0.005 \
        --distilled "default recipe (LM 1-best labels)=runs/efficacy_tts_en/pseudo-lm-1best" \
        --teacher runs/tts_en/teacher/checkpoint_best.pt --lm data/tts_en/lm/4gram.bin --alphas 0.25,0.5,0.75,1 --jobs 1 --threads 1

* The true-text corpus is `--out`/corpus: links to every file of `--corpus` but the untranscribed split's, which is
  copied with the text of `--truth` (JSONL of id and text), normalised as the corpus's import was; `--limit N`
  keeps its first N utterances (as `distill.untranscribed_limit` does).
* Trainings are benchmarks/efficacy.py's: resumable run directories `--out`/true-text-seedS, finished runs reused;
  every model is evaluated on `--corpus`'s dev and test (greedy; beam + LM with alpha / beta tuned on dev).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np

import efficacy
from _common import command_line, machine, write_section
from offline_kd.data.text import normalize

PER_UTTERANCE = ("feature_sha256", "nonfinite", "transcripts", "utterance_ids")


def true_text_split(src: Path, dst: Path, truth: dict, mode: str, limit: int | None) -> int:
    """Copy the split `src` to `dst` with each utterance's true text; the first `limit` utterances only. Returns the
    number of utterances written."""
    with h5py.File(src, "r") as h:
        ids = [u.decode() if isinstance(u, bytes) else str(u) for u in h["utterance_ids"][...]]
        n = len(ids) if limit is None else min(limit, len(ids))
        missing = [u for u in ids[:n] if u not in truth]
        if missing:
            raise SystemExit(f"label_ceiling: {len(missing)} utterances of {src} have no text in --truth "
                             f"(first: {missing[0]})")
        offsets = h["offsets"][: n + 1]
        tmp = dst.with_suffix(".h5.partial")
        with h5py.File(tmp, "w") as o:
            o.attrs.update(dict(h.attrs))
            o.attrs["transcribed"] = True
            o["offsets"] = offsets
            o["features"] = h["features"][: int(offsets[-1])]
            for k in PER_UTTERANCE:
                if k == "transcripts":
                    o.create_dataset(k, data=np.array([normalize(truth[u], mode).encode() for u in ids[:n]],
                                                      dtype=object), dtype=h5py.string_dtype())
                elif k in h:
                    o.create_dataset(k, data=h[k][:n], dtype=h[k].dtype)
        os.replace(tmp, dst)
    return n


def true_text_corpus(corpus: Path, split: str, truth_file: Path, out: Path, limit: int | None) -> Path:
    """`out`/corpus: `corpus` with `split` transcribed by `truth_file` (made once)."""
    dst = out / "corpus"
    for need in (corpus / f"{split}.h5", truth_file):
        if not need.is_file():
            raise SystemExit(f"label_ceiling: {need}: no such file (run from the repository root)")
    if (dst / f"{split}.h5").is_file():
        return dst
    dst.mkdir(parents=True, exist_ok=True)
    for f in corpus.iterdir():
        if f.name != f"{split}.h5" and not (dst / f.name).exists():
            (dst / f.name).symlink_to(f.resolve())
    truth = {}
    for line in truth_file.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            truth[r["id"]] = r["text"]
    mode = (json.loads((corpus / "corpus.json").read_text()).get("normalize") or "none")
    n = true_text_split(corpus / f"{split}.h5", dst / f"{split}.h5", truth, mode, limit)
    print(f"label_ceiling: {dst}: {split} with the true text of {n} utterances", flush=True)
    return dst


def figures(runs: list[Path], args) -> list[dict]:
    return [efficacy.evaluate(r / "checkpoint_best.pt", args.corpus, args.lm, args.alphas, args.betas) for r in runs]


def mean(rs: list[dict], key: str) -> float | None:
    return None if any(r[key] is None for r in rs) else statistics.mean(r[key] for r in rs)


def gap(base: list[dict], rs: list[dict], teacher: dict, key: str) -> str:
    b, r, t = mean(base, key), mean(rs, key), teacher[key]
    return "n/a" if None in (b, r, t) or b <= t else f"{100 * (b - r) / (b - t):.0f}%"


def table(args, teacher: dict, rows: list[tuple[str, list[dict]]]) -> str:
    base = rows[0][1]
    out = ["| model | test WER greedy | minus CTC-only (± SE) | test WER beam + LM | minus CTC-only (± SE) | gap closed, greedy / LM |",
           "|---|---|---|---|---|---|",
           f"| teacher | {teacher['test']:.2f} | | {efficacy_num(teacher['beam'])} | | |"]
    for label, rs in rows:
        first = label == rows[0][0]
        d = ["", ""] if first else [efficacy.paired([r["test"] for r in rs], [r["test"] for r in base]),
                                    "n/a" if mean(rs, "beam") is None else
                                    efficacy.paired([r["beam"] for r in rs], [r["beam"] for r in base])]
        g = "" if first else f"{gap(base, rs, teacher, 'test')} / {gap(base, rs, teacher, 'beam')}"
        out.append(f"| {label} | {mean(rs, 'test'):.2f} | {d[0]} | {efficacy_num(mean(rs, 'beam'))} | {d[1]} | {g} |")
    return "\n".join(out)


def efficacy_num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--split", default="untranscribed", help="the untranscribed split the truth transcribes")
    ap.add_argument("--truth", required=True, help="JSONL with id and text of every utterance")
    ap.add_argument("--limit", type=int, help="the split's first N utterances only (distill.untranscribed_limit)")
    ap.add_argument("--config", required=True, help="the CTC-only baseline's config")
    ap.add_argument("--epochs", type=int, required=True, help="the distilled student's epochs")
    ap.add_argument("--sets", default="", help="further --set overrides, ';'-separated")
    ap.add_argument("--out", required=True)
    ap.add_argument("--baseline", required=True, help="the CTC-only runs' prefix (PREFIX-seedS)")
    ap.add_argument("--distilled", required=True, action="append",
                    help="LABEL=PREFIX: distilled runs (PREFIX-seedS) and their row's label; repeatable")
    ap.add_argument("--teacher", required=True, help="the teacher's checkpoint")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, help="threads of each training (default: cores / jobs)")
    ap.add_argument("--lm")
    ap.add_argument("--alphas", default="0.25,0.5,1")
    ap.add_argument("--betas", default="0,1,2")
    ap.add_argument("--section", default="label-ceiling")
    ap.add_argument("--title", default="The label ceiling: a CTC-only student on the untranscribed audio's true text")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s]
    out = Path(args.out)
    efficacy.ENV["OMP_NUM_THREADS"] = str(args.threads or max(1, (os.cpu_count() or 1) // args.jobs))
    corpus = true_text_corpus(Path(args.corpus), args.split, Path(args.truth), out, args.limit)
    sets = [f"data.corpus={corpus}", f"data.train_split=[train,{args.split}]", f"train.epochs={args.epochs}",
            *[s for s in args.sets.split(";") if s]]
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda s: efficacy.train("train", args.config, out / f"true-text-seed{s}", s, sets), seeds))
    teacher = efficacy.evaluate(Path(args.teacher), args.corpus, args.lm, args.alphas, args.betas)
    rows = [("CTC-only, the transcribed split", figures([Path(f"{args.baseline}-seed{s}") for s in seeds], args)),
            *[(f"distilled, {label}", figures([Path(f"{prefix}-seed{s}") for s in seeds], args))
              for label, prefix in (d.split("=", 1) for d in args.distilled)],
            (f"CTC-only, the transcribed split and {args.split} with its true text",
             figures([out / f"true-text-seed{s}" for s in seeds], args))]
    body = (f"## {args.title}\n\n`{command_line()}`\n\nMachine: {machine()}; {args.jobs} training run(s) at a time with "
            f"{efficacy.ENV['OMP_NUM_THREADS']} thread(s) each. "
            f"Seeds {seeds}; test WER % of each run's best-dev checkpoint, beam + LM at alpha / beta tuned on dev; "
            f"differences paired by seed against the CTC-only student on the transcribed split alone; gap closed = "
            f"(CTC-only - model) / (CTC-only - teacher) of the seeds' means. The true-text student: `{args.config}` "
            f"with {' '.join(sets[1:])} on a copy of the corpus whose `{args.split}` "
            f"({'all' if args.limit is None else f'the first {args.limit}'} utterances) carries the text of "
            f"`{args.truth}`.\n\n" + table(args, teacher, rows) + "\n")
    write_section(args.section, body)


if __name__ == "__main__":
    main()
