"""How good are the pseudo-labels a cache gives untranscribed audio? WER of the teacher's greedy 1-best and of its
LM 1-best (dump.lm_targets) against the true text, which a synthesized corpus knows even for its untranscribed
split (a JSONL with "id" and "text" per utterance, e.g. recipes/tts_en's raw/utterances.jsonl). With the teacher
confidence the dump stores per utterance (cache/confidence.py): how it tracks the 1-best's true error (calibration:
mean confidence against the 1-best's character accuracy per confidence decile) and the WER of the share
`distill.min_confidence` would keep at each threshold. With an LM N-best too: which confidence ranks the LM 1-best's
true error best (the teacher's, the LM 1-best's posterior among the N, their product).

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
        rows.append(("teacher + LM, 1-best of the stored N-best (distill.pseudo_labels: lm_1best; lm: all N)",
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
    if split.confidence is not None:
        lines += _confidence_rows(split.confidence, refs, greedy)
    if split.confidence is not None and weights is not None:
        lines += _lm_confidence_rows(np.asarray(split.confidence), weights, refs, greedy, rows[1][1])
    write_section(args.section, "\n".join(lines))


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties given their mean rank (Spearman's correlation is Pearson's of these)."""
    x = np.asarray(x)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x))
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def _lm_confidence_rows(conf: np.ndarray, top: np.ndarray, refs: list, greedy: list, lm1: list) -> list:
    """Which per-utterance confidence ranks the LM 1-best's true error best: the teacher's (fitted to its greedy
    1-best), the LM 1-best's posterior among the N, and their product (what distill.confidence_weighting uses with an
    LM's pseudo-labels)."""
    acc_lm = np.array([max(0.0, 100.0 - error_rates([r], [h])["cer"]) / 100 for r, h in zip(refs, lm1)])
    acc_g = np.array([max(0.0, 100.0 - error_rates([r], [h])["cer"]) / 100 for r, h in zip(refs, greedy)])
    out = ["\nWhich confidence fits the LM 1-best? Correlation over utterances with its character accuracy (1 - CER), "
           "Pearson / Spearman (ranks), and with the greedy 1-best's for comparison:\n",
           "| confidence | LM 1-best: Pearson | LM 1-best: Spearman | greedy 1-best: Pearson | median |",
           "|---|---|---|---|---|"]
    for name, c in (("teacher confidence (mean posterior of the greedy tokens)", conf),
                    ("LM 1-best's posterior among the N", top),
                    ("their product (confidence_weighting with distill.pseudo_labels lm / lm_1best)", conf * top)):
        out.append(f"| {name} | {np.corrcoef(c, acc_lm)[0, 1]:.3f} | "
                   f"{np.corrcoef(_ranks(c), _ranks(acc_lm))[0, 1]:.3f} | {np.corrcoef(c, acc_g)[0, 1]:.3f} | "
                   f"{np.median(c):.3f} |")
    return out


def _confidence_rows(conf: np.ndarray, refs: list, hyps: list) -> list:
    """Calibration by decile, and the WER of the kept share at thresholds that keep 100 ... 20% of the split."""
    per = [error_rates([r], [h]) for r, h in zip(refs, hyps)]
    acc = np.array([max(0.0, 100.0 - p["cer"]) / 100 for p in per])
    order = np.argsort(conf)
    out = ["\nTeacher confidence (stored by the dump) against the greedy 1-best's true error. Calibration, by "
           "confidence decile (lowest first): mean confidence vs the 1-best's character accuracy (1 - CER).\n",
           "| decile | utterances | mean confidence | character accuracy | WER of the decile |", "|---|---|---|---|---|"]
    for k, idx in enumerate(np.array_split(order, 10)):
        if not len(idx):
            continue
        r = error_rates([refs[i] for i in idx], [hyps[i] for i in idx])
        out.append(f"| {k + 1} | {len(idx)} | {conf[idx].mean():.3f} | {acc[idx].mean():.3f} | {r['wer']:.2f} |")
    out += ["\nThe share `distill.min_confidence` keeps, and its pseudo-labels' WER:\n",
            "| threshold | kept | WER of the kept (%) | CER of the kept (%) |", "|---|---|---|---|"]
    for share in (1.0, 0.9, 0.75, 0.5, 0.35, 0.2):
        keep = order[len(order) - int(round(share * len(order))):]
        thr = float(conf[keep].min()) if len(keep) else 1.0
        r = error_rates([refs[i] for i in keep], [hyps[i] for i in keep])
        out.append(f"| {thr:.3f} | {100 * len(keep) / max(len(order), 1):.0f}% | {r['wer']:.2f} | {r['cer']:.2f} |")
    rho = np.corrcoef(conf, acc)[0, 1] if len(conf) > 1 else float("nan")
    out.append(f"\nPearson correlation of confidence and character accuracy over utterances: {rho:.3f}.")
    return out


if __name__ == "__main__":
    main()
