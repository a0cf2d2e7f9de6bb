"""The paired difference of two families of finished runs: test WER of A minus B, greedy and beam + LM, per seed and
as mean ± standard error, from each run's efficacy_eval.json (written by efficacy.py / robustness.py's evaluation).

    python benchmarks/paired.py runs/efficacy/untranscribed-soft-alpha-0-6-beta-0-5-ctc-x-confidence \
        runs/efficacy/distilled-default --seeds 0,1,2

A and B name run directories without their `-seed<N>` suffix."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from robustness import fmt, stats  # noqa: E402


def test_wer(run: str, seed: int) -> dict:
    path = Path(f"{run}-seed{seed}") / "efficacy_eval.json"
    if not path.is_file():
        raise SystemExit(f"paired: {path}: no evaluation (train and evaluate the run with efficacy.py first)")
    return json.loads(path.read_text())["test"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    for key, label in (("greedy_wer", "greedy"), ("beam_wer", "beam + LM")):
        d = [test_wer(args.a, s)[key] - test_wer(args.b, s)[key] for s in seeds]
        print(f"{label}: {fmt(*stats(d))} (per seed: {', '.join(f'{x:+.2f}' for x in d)})")


if __name__ == "__main__":
    main()
