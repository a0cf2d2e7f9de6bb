"""Bytes per frame and fidelity of each cache codec combination, on a real teacher.

    python benchmarks/cache_codecs.py --teacher runs/seed/teacher/checkpoint_best.pt --corpus data/seed \
        --split dev --sample 64

For each combination: dump the split into a temporary cache, then report target bytes per frame (log-probs +
cached hidden layers + 1-best path, after compression) and the ratio to float32 (4 * (V + sum of hidden dims)),
KL(live || cached) at T = 1, 3, 4 (mean and max over frames of `--sample` utterances, as `cache verify` computes
it), top-1 agreement, hidden-state relative squared error, encode speed (codec encode only, frames/s) and decode
speed (read + decompress + decode of the whole split in batch-sized ranges, frames/s), and that decode speed over
the rate at which the seed's student (4 x BiLSTM(256), CTC step, same machine, measured in the same run) consumes
teacher frames in training: the goal is at least 10x, so decoding never limits training.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import yaml

from _common import Timer, command_line, machine, write_section
from train_throughput import run_mode
from offline_kd.cache.info import cache_info
from offline_kd.cache.reader import TeacherCache
from offline_kd.distillation.fidelity import fidelity
from offline_kd.config import DumpConfig, ExperimentConfig, build_dataclass
from offline_kd.data.corpus import Corpus
from offline_kd.data.sampler import SortedRunBatchSampler
from offline_kd.commands import dump_teacher
from offline_kd.runtime.loaders import resolve_device
from offline_kd.models.checkpoint import load_checkpoint

COMBOS = {
    "float32": {"log_probs": "float32", "hidden": "float32"},
    "float16": {"log_probs": "float16", "hidden": "float16"},
    "topk16 + int8": {"log_probs": "topk", "topk_k": 16, "hidden": "int8"},
    "topk(cov .999, k<=32) + int8": {"log_probs": "topk", "topk_k": 32, "topk_coverage": 0.999, "hidden": "int8"},
    "topk(cov .999, k<=32) + lowrank256/int8": {"log_probs": "topk", "topk_k": 32, "topk_coverage": 0.999,
                                                "hidden": "lowrank", "lowrank_rank": 256, "lowrank_coeff": "int8"},
    "topk(cov .999, k<=32) + lowrank384/int8": {"log_probs": "topk", "topk_k": 32, "topk_coverage": 0.999,
                                                "hidden": "lowrank", "lowrank_rank": 384, "lowrank_coeff": "int8"},
    "topk(cov .999, k<=32, prior tail) + lowrank256/int8": {
        "log_probs": "topk", "topk_k": 32, "topk_coverage": 0.999, "topk_tail": "prior", "hidden": "lowrank",
        "lowrank_rank": 256, "lowrank_coeff": "int8"},
    "sampled32 + lowrank256/int8": {"log_probs": "sampled", "sampled_n": 32, "hidden": "lowrank",
                                    "lowrank_rank": 256, "lowrank_coeff": "int8"},
    "sampled64 + lowrank256/int8": {"log_probs": "sampled", "sampled_n": 64, "hidden": "lowrank",
                                    "lowrank_rank": 256, "lowrank_coeff": "int8"},
    "logits lowrank16/int8 + lowrank64/int8": {"log_probs": "lowrank", "logits_rank": 16, "hidden": "lowrank",
                                               "lowrank_rank": 64, "lowrank_coeff": "int8"},
    "logits lowrank32/int8 + lowrank128/int8": {"log_probs": "lowrank", "logits_rank": 32, "hidden": "lowrank",
                                                "lowrank_rank": 128, "lowrank_coeff": "int8"},
    "logits lowrank32/fp16 + lowrank128/int8": {"log_probs": "lowrank", "logits_rank": 32, "logits_coeff": "float16",
                                                "hidden": "lowrank", "lowrank_rank": 128, "lowrank_coeff": "int8"},
    "logits lowrank64/int8 + lowrank192/int8": {"log_probs": "lowrank", "logits_rank": 64, "hidden": "lowrank",
                                                "lowrank_rank": 192, "lowrank_coeff": "int8"},
    "topk(cov .999, k<=8, lowrank32 tail) + lowrank128/int8": {
        "log_probs": "topk", "topk_k": 8, "topk_coverage": 0.999, "topk_tail": "lowrank", "logits_rank": 32,
        "hidden": "lowrank", "lowrank_rank": 128, "lowrank_coeff": "int8"},
    "topk(cov .999, k<=8, lowrank32 tail) + lowrank192/int8": {
        "log_probs": "topk", "topk_k": 8, "topk_coverage": 0.999, "topk_tail": "lowrank", "logits_rank": 32,
        "hidden": "lowrank", "lowrank_rank": 192, "lowrank_coeff": "int8"},
    "topk(cov .999, k<=8, lowrank32 tail) + lowrank256/int8": {
        "log_probs": "topk", "topk_k": 8, "topk_coverage": 0.999, "topk_tail": "lowrank", "logits_rank": 32,
        "hidden": "lowrank", "lowrank_rank": 256, "lowrank_coeff": "int8"},
    "topk(cov .999, k<=8, lowrank96 tail) + step 0.009": {
        "log_probs": "topk", "topk_k": 8, "topk_coverage": 0.999, "topk_tail": "lowrank", "logits_rank": 96,
        "hidden": "lowrank", "lowrank_rank": 1024, "lowrank_coeff": "step", "lowrank_target_error": 0.009},
    "topk(cov .999, k<=8, lowrank128 tail) + step 0.008": {
        "log_probs": "topk", "topk_k": 8, "topk_coverage": 0.999, "topk_tail": "lowrank", "logits_rank": 128,
        "hidden": "lowrank", "lowrank_rank": 1024, "lowrank_coeff": "step", "lowrank_target_error": 0.008},
    "topk(cov .9999, k<=16, lowrank128 tail) + step 0.008": {
        "log_probs": "topk", "topk_k": 16, "topk_coverage": 0.9999, "topk_tail": "lowrank", "logits_rank": 128,
        "hidden": "lowrank", "lowrank_rank": 1024, "lowrank_coeff": "step", "lowrank_target_error": 0.008},
    "topk(cov .9999, k<=16, lowrank64 tail) + lowrank256/int8": {
        "log_probs": "topk", "topk_k": 16, "topk_coverage": 0.9999, "topk_tail": "lowrank", "logits_rank": 64,
        "hidden": "lowrank", "lowrank_rank": 256, "lowrank_coeff": "int8"},
}


DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "dump_config.yaml"
DEFAULT = "default (configs/dump_config.yaml)"
COMBOS[DEFAULT] = {k: v for k, v in yaml.safe_load(DEFAULT_CONFIG.read_text())["dump"]["codecs"].items()
                   if k not in ("compressor", "level")}
PRESET_CONFIG = DEFAULT_CONFIG.parent / "dump_config_1pct.yaml"
PRESET = "1% preset (configs/dump_config_1pct.yaml)"
COMBOS[PRESET] = {k: v for k, v in yaml.safe_load(PRESET_CONFIG.read_text())["dump"]["codecs"].items()
                  if k not in ("compressor", "level")}
COMBOS["1% preset with 8 codebooks a layer"] = {**COMBOS[PRESET], "hidden": {**COMBOS[PRESET]["hidden"],
                                                                          "num_codebooks": 8}}


def goals(r: dict, train_fps: float) -> str:
    """The issue's goals for the compact default, checked on its measured row."""
    herr = max(r["hidden_relative_sq_error"].values())
    kl = max(r["kl_T1_mean"], r["kl_T3_mean"], r["kl_T4_mean"])
    checks = [(f"bytes {100 * r['ratio']:.2f}% of float32", r["ratio"] <= 0.05, "<= 5%"),
              (f"mean KL at T = 1/3/4 at most {kl:.2e}", kl <= 1e-3, "<= 1e-3"),
              (f"hidden relative error {herr:.2e}", herr <= 0.01, "<= 1e-2"),
              (f"decode {r['decode_fps'] / train_fps:.1f}x the training rate", r["decode_fps"] >= 10 * train_fps,
               ">= 10x")]
    return "; ".join(f"{text} (goal {goal}: {'met' if ok else 'MISSED'})" for text, ok, goal in checks)


def goals_preset(r: dict, train_fps: float) -> str:
    """#30's goals for the 1% preset, checked on its measured row."""
    checks = [(f"{r['bytes']:.1f} bytes a frame, {100 * r['ratio']:.2f}% of float32", r["bytes"] <= 110,
               "<= 110 B, 1%"),
              (f"mean KL at T = 1 {r['kl_T1_mean']:.2e}", r["kl_T1_mean"] <= 1e-2, "<= 1e-2"),
              (f"decode {r['decode_fps'] / train_fps:.1f}x the training rate", r["decode_fps"] >= 10 * train_fps,
               ">= 10x")]
    return "; ".join(f"{text} (goal {goal}: {'met' if ok else 'MISSED'})" for text, ok, goal in checks)


def decode_speed(split, batch: int = 16) -> float:
    with Timer() as t:
        for lo in range(0, len(split), batch):
            split.read_range(lo, min(len(split), lo + batch))
    return split.num_frames / t.seconds


def encode_speed(cache: TeacherCache, split_name: str, ref: TeacherCache) -> float:
    """Encode the float32 reference arrays of the split with this cache's codecs (no compression)."""
    data = ref.split(split_name).read_range(0, len(ref.split(split_name)))
    lp = np.concatenate([d["log_probs"] for d in data])
    hid = {L: np.concatenate([d["hidden"][L] for d in data]) for L in cache.hidden_codecs}
    with Timer() as t:
        cache.lp_codec.encode(lp)
        for L, c in cache.hidden_codecs.items():
            c.encode(hid[L])
    return len(lp) / t.seconds


def student_frames_per_second(corpus_path: str, split: str, teacher_meta, batches: int) -> float:
    """Teacher output frames per second the seed's student consumes in training (CTC step on the same batches
    as train_throughput.py; input frames / subsampling)."""
    corpus = Corpus(corpus_path)
    reader = corpus.split(split)
    cfg = build_dataclass(ExperimentConfig, {
        "model": {"input_dim": corpus.feature_dim, "hidden_dim": 256, "num_layers": 4,
                  "num_classes": len(corpus.vocab), "dropout": 0.3,
                  "subsampling": teacher_meta.subsampling},
        "distill": {"cache": "", "layer_mapping": {2: 2, 3: 4}}})
    sampler = SortedRunBatchSampler(reader.lengths, np.arange(len(reader)), 16, None, seed=0)
    sampler.set_epoch(1)
    chosen = sampler.batches()[:batches]
    dims = {int(L): d for L, d in teacher_meta.layer_dims.items()}
    fps = [run_mode("ctc", cfg, reader, corpus.vocab, chosen, resolve_device("auto"), None, None, dims)
           for _ in range(3)]
    return float(np.median(fps)) / teacher_meta.subsampling


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--split", default="dev")
    ap.add_argument("--sample", type=int, default=64)
    ap.add_argument("--only", default=None, help="semicolon-separated combo names (float32 first)")
    ap.add_argument("--keep", default=None, help="directory to keep the caches in (default: temporary)")
    ap.add_argument("--student-batches", type=int, default=4, help="batches timed for the student's training speed")
    ap.add_argument("--section", default="cache-codecs", help="section of docs/benchmarks.md to write")
    ap.add_argument("--title", default="Cache codecs: size and fidelity")
    args = ap.parse_args()
    tmp = Path(args.keep or tempfile.mkdtemp())
    tmp.mkdir(parents=True, exist_ok=True)
    rows = []
    ref = None
    names = list(COMBOS) if not args.only else args.only.split(";")
    for i, name in enumerate(names):
        out = tmp / f"codec{i}.zarr"
        cfg = build_dataclass(DumpConfig, {"teacher": args.teacher, "corpus": args.corpus, "splits": [args.split],
                                           "output": str(out), "progress": False, "codecs": COMBOS[name]})
        dump_teacher.run(cfg, overwrite=True, log=lambda *_: None)
        cache = TeacherCache(str(out))
        if name == "float32":
            ref = cache
        info = cache_info(str(out))
        fid = fidelity(cache, args.teacher, args.sample, "auto", log=lambda *_: None)
        row = {"name": name, "bytes": info["target_bytes_per_frame"], "ratio": info["ratio_to_float32"],
               "f32": info["float32_bytes_per_frame"], **fid,
               "decode_fps": decode_speed(cache.split(args.split)),
               "encode_fps": encode_speed(cache, args.split, ref) if ref is not None else float("nan")}
        rows.append(row)
        print(name, {k: v for k, v in row.items() if not isinstance(v, dict)})
    split_frames = ref.split(args.split).num_frames if ref else "?"
    train_fps = student_frames_per_second(args.corpus, args.split, ref.meta, args.student_batches)
    if not args.keep:
        shutil.rmtree(tmp)
    f32 = rows[0]["f32"]
    ck = load_checkpoint(args.teacher)
    mc = ck["model_config"]
    trained = (f"{mc['num_layers']} x BiLSTM({mc['hidden_dim']}), V = {mc['num_classes']}, trained "
               f"{ck.get('epoch', '?')} epochs, dev greedy WER {ck.get('dev', {}).get('wer', float('nan')):.1f}%")
    lines = [f"## {args.title}\n", f"`{command_line()}`\n",
             f"Machine: {machine()}. Teacher `{args.teacher}` ({trained}), split `{args.split}` "
             f"({split_frames} frames), layers 2 and 4; float32 = {f32} bytes/frame. "
             f"KL is KL(live || cached) per frame in nats over {args.sample} sampled utterances; hidden error is "
             f"sum((h - h')^2) / sum(h^2), the worse of the two layers. Bytes include zstd (level 3). "
             f"A sampled target puts no mass off its drawn tokens, so its KL(live || cached) is infinite by "
             f"construction; its expectation is the teacher's distribution (unbiased), which only the student's "
             f"WER can judge (efficacy table). The seed's student (4 x BiLSTM(256)) trains on {train_fps:.0f} "
             f"teacher frames/s here (median of 3 timings of {args.student_batches} batches); the last column is "
             f"decode speed over that.\n",
             "| codecs | bytes/frame | % of float32 | KL T=1 mean / max | KL T=3 mean | KL T=4 mean | top-1 agree | "
             "hidden rel. err | encode frames/s | decode frames/s | decode / training |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        herr = max(r["hidden_relative_sq_error"].values())
        lines.append(f"| {r['name']} | {r['bytes']:.1f} | {100 * r['ratio']:.2f}% | {r['kl_T1_mean']:.2e} / "
                     f"{r['kl_T1_max']:.2e} | {r['kl_T3_mean']:.2e} | {r['kl_T4_mean']:.2e} | "
                     f"{100 * r['top1_agreement']:.2f}% | {herr:.2e} | {r['encode_fps']:.0f} | {r['decode_fps']:.0f} | "
                     f"{r['decode_fps'] / train_fps:.1f}x |")
    for r in rows:
        if r["name"] == DEFAULT:
            lines.append(f"\nThe default `{DEFAULT_CONFIG.name}` codecs ({COMBOS[DEFAULT]}): {goals(r, train_fps)}. "
                         f"Whether its students match the float32 cache's: efficacy table below.")
        if r["name"] == PRESET:
            lines.append(f"\nThe 1% preset `{PRESET_CONFIG.name}` ({COMBOS[PRESET]}): {goals_preset(r, train_fps)}. "
                         f"Its hidden error is the codebooks' reconstruction (vector quantisation is coarse by design: "
                         f"the codebook loss trains on the indexes, not on the reconstruction).")
    write_section(args.section, "\n".join(lines))


if __name__ == "__main__":
    main()
