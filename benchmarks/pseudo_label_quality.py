"""How good are the pseudo-labels a cache gives untranscribed audio? WER of the teacher's greedy 1-best and of its
LM 1-best (dump.lm_targets) against the true text, which a synthesized corpus knows even for its untranscribed
split (a JSONL with "id" and "text" per utterance, e.g. recipes/tts_en's raw/utterances.jsonl).

    python benchmarks/pseudo_label_quality.py --cache cache/tts_en_teacher.zarr --split untranscribed \
        --truth data/tts_en/raw/utterances.jsonl
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from _common import command_line, machine, write_section
from offline_kd.cache.reader import TeacherCache
from offline_kd.data.targets import collapse_best_path
from offline_kd.data.vocab import Vocabulary
from offline_kd.decoding.metrics import error_rates


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", required=True)
    ap.add_argument("--split", default="untranscribed")
    ap.add_argument("--truth", required=True, help="JSONL with id and text of every utterance")
    ap.add_argument("--section", default="pseudo-label-quality")
    args = ap.parse_args()
    cache = TeacherCache(args.cache)
    split = cache.split(args.split)
    vocab = Vocabulary.from_dict(cache.meta.vocab)
    truth = {}
    for line in open(args.truth):
        r = json.loads(line)
        truth[r["id"]] = r["text"]
    refs = [truth[u] for u in split.utterance_ids]
    greedy = [vocab.decode(collapse_best_path(split.read(p)["best_path"]).tolist()) for p in range(len(split))]
    rows = [("teacher greedy 1-best (distill.pseudo_labels: greedy)", greedy)]
    weights = None
    if split.has_lm_nbest:
        nbest = [split.lm_nbest(p) for p in range(len(split))]
        rows.append(("teacher + LM, 1-best of the stored N-best (distill.pseudo_labels: lm)",
                     [vocab.decode(h[0][0].tolist()) if h else "" for h in nbest]))
        weights = np.array([h[0][1] if h else 0.0 for h in nbest])
    lines = [f"## Pseudo-label quality: {args.split} of `{args.cache}`\n", f"`{command_line()}`\n",
             f"Machine: {machine()}. WER / CER (%) of the pseudo-labels the cache holds for the {len(split)} "
             f"utterances of `{args.split}`, against their true text (`{args.truth}`), pooled over the split.\n",
             "| pseudo-labels | WER | CER |", "|---|---|---|"]
    for name, hyps in rows:
        r = error_rates(refs, hyps)
        lines.append(f"| {name} | {r['wer']:.2f} | {r['cer']:.2f} |")
    if weights is not None:
        lines.append(f"\nThe LM 1-best's posterior weight among the N: median {np.median(weights):.2f}, "
                     f"mean {weights.mean():.2f}.")
    write_section(args.section, "\n".join(lines))


if __name__ == "__main__":
    main()
