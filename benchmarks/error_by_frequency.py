"""Where do a model's word errors come from? Greedy errors on a split, binned by how often each reference word
occurs in the training transcripts (issue #17: a student inherits its teacher's errors; if every model fails on the
same rare words, a bigger teacher cannot teach them).

    python benchmarks/error_by_frequency.py --corpus data/demo --split test \
        teacher=runs/demo/teacher/checkpoint_best.pt baseline=runs/demo/baseline/checkpoint_best.pt

For each model and bin: the reference words in the bin, and the share of them substituted or deleted (insertions
belong to no reference word and are left out, so the shares do not add up to the WER). Written to
docs/benchmarks.md, section `error-by-frequency`.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jiwer  # noqa: E402

from _common import command_line, machine, write_section  # noqa: E402
from offline_kd.commands import evaluate  # noqa: E402
from offline_kd.data.corpus import Corpus  # noqa: E402

BINS = ((0, 0, "0"), (1, 4, "1-4"), (5, 19, "5-19"), (20, None, "20+"))


def bin_of(count: int) -> str:
    for lo, hi, name in BINS:
        if count >= lo and (hi is None or count <= hi):
            return name
    raise AssertionError(count)


def errors_by_bin(references: list[str], hypotheses: list[str], train_counts: collections.Counter) -> dict:
    out = {name: [0, 0] for _, _, name in BINS}
    result = jiwer.process_words(references, hypotheses)
    for ref, alignment in zip(result.references, result.alignments):
        wrong = [False] * len(ref)
        for chunk in alignment:
            if chunk.type in ("substitute", "delete"):
                for i in range(chunk.ref_start_idx, chunk.ref_end_idx):
                    wrong[i] = True
        for word, bad in zip(ref, wrong):
            cell = out[bin_of(train_counts[word])]
            cell[0] += 1
            cell[1] += bad
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--train-split", default="train")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    ap.add_argument("models", nargs="+", help="NAME=CHECKPOINT")
    args = ap.parse_args()
    corpus = Corpus(args.corpus)
    reader = corpus.split(args.train_split)
    reader.require_transcripts("counting word frequencies")
    counts = collections.Counter(w for text in reader.transcripts for w in text.split())
    rows = []
    for spec in args.models:
        name, _, ckpt = spec.partition("=")
        if not ckpt:
            ap.error(f"models are NAME=CHECKPOINT, got {spec!r}")
        r = evaluate.run(ckpt, args.split, corpus_dir=args.corpus, log=lambda *_: None)
        bins = errors_by_bin(r["references"], r["hypotheses"], counts)
        rows.append((name, r["wer"], bins))
    head = "| model | WER | " + " | ".join(f"words heard {n} times in {args.train_split}" for _, _, n in BINS) + " |"
    lines = [head, "|" + "---|" * (2 + len(BINS))]
    for name, wer, bins in rows:
        cells = [f"{100 * e / n:.1f}% of {n}" if n else "-" for n, e in (bins[b] for _, _, b in BINS)]
        lines.append(f"| {name} | {wer:.2f} | " + " | ".join(cells) + " |")
    body = "\n".join([
        "## Where the errors are: word errors by training frequency",
        "",
        f"Greedy decoding on `{args.corpus}` {args.split}: the share of reference words substituted or deleted, by how "
        f"often the word occurs in the `{args.train_split}` transcripts (insertions are left out).",
        "",
        *lines,
        "",
        f"Command: `{command_line()}`. Machine: {machine()}.",
    ])
    if args.no_write:
        print(body)
    else:
        write_section("error-by-frequency", body)


if __name__ == "__main__":
    main()
