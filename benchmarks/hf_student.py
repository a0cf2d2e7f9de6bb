"""The wav2vec2-family student (`model.type: hf`) on tts_en, from a wav2vec2-base-size teacher: a plumbing and cost
figure. No pretrained weights are reachable here, so the teacher is randomly initialised and its targets carry no
knowledge: the WER this prints measures nothing but that the path runs; the times and sizes are the figures.

    python benchmarks/hf_student.py --train data/tts_en/raw/train.json --dev data/tts_en/raw/dev.json \
        --vocab data/tts_en/corpus/vocab.txt --limit 200 --epochs 1

1. The first `--limit` rows of the train manifest and a quarter as many of dev are imported with `data import
   --keep-audio --cmvn utterance` (the tts_en recipe's front end) into a temporary corpus.
2. A wav2vec2-base-size `Wav2Vec2ForCTC` (benchmarks/hf_teacher.py's: transformers' default config, 94.4M
   parameters, group norm) is saved into a temporary directory and dumped (`dump-teacher`, layers 4 and 8, float16).
3. From that one cache, one after another, each `--epochs` epochs with the same recipe (alpha 0.7, beta 0.2, gamma
   0.1: KL, CTC and hidden-state MSE): the hf student with 2 transformer layers initialised from the teacher's
   feature encoder and first 2 layers (DistilHuBERT's recipe; student layers 1, 2 -> teacher layers 4, 8), and the
   tts_en recipe's BiLSTM student (3 x 96, student layers 2, 3 -> teacher layers 4, 8) at the cache's 2x.
The section `hf-student` gets the dump's time, the cache's size and both students' training speed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from _common import Timer, command_line, machine, write_section
from hf_teacher import offline_kd, save_model


def run_logged(*args) -> str:
    """offline-kd with its log (stdout and stderr) returned; a failure stops the benchmark with its tail."""
    import subprocess
    p = subprocess.run([sys.executable, "-m", "offline_kd", *map(str, args)], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"offline-kd {' '.join(map(str, args))} failed:\n{p.stdout[-1500:]}{p.stderr[-1500:]}")
    return p.stdout + p.stderr

LAYERS = [4, 8]


def subset(manifest: str, n: int, out: Path) -> Path:
    """The first n rows of a NeMo manifest, with absolute audio paths."""
    base = Path(manifest).resolve().parent
    rows = []
    for r in Path(manifest).read_text().splitlines()[:n]:
        row = json.loads(r)
        if not os.path.isabs(row["audio_filepath"]):
            row["audio_filepath"] = str(base / row["audio_filepath"])
        rows.append(json.dumps(row))
    out.write_text("\n".join(rows) + "\n")
    return out


def epochs_of(run_dir: Path) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if r.get("event") == "epoch"]


def student(tmp: Path, name: str, model: dict, mapping: dict, epochs: int, vocab_size: int) -> dict:
    import yaml
    cfg = {"data": {"corpus": str(tmp / "corpus"), "train_split": "train", "dev_split": "dev", "batch_size": 8},
           "model": {"input_dim": 80, "num_classes": vocab_size, "subsampling": 2, **model},
           "augment": {"time_masks": 0, "freq_masks": 0},
           "train": {"epochs": epochs, "lr": 0.0005, "warmup_steps": 10, "output_dir": str(tmp / name),
                     "progress": False, "seed": 0},
           "distill": {"cache": str(tmp / "cache.zarr"), "alpha": 0.7, "beta": 0.2, "gamma": 0.1,
                       "layer_mapping": mapping, "temperature_schedule": [[1, 1.0]]}}
    (tmp / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    with Timer() as t:
        out = run_logged("train-student", "--config", tmp / f"{name}.yaml")
    eps = epochs_of(tmp / name)
    line = next((ln for ln in out.splitlines() if ln.startswith("student:")), "student: ?")
    return {"wall": t.seconds, "epoch_seconds": [e["seconds"] for e in eps],
            "frames_per_second": [e["frames_per_second"] for e in eps], "dev_wer": eps[-1]["dev_wer"],
            "student_line": line.removeprefix("student: ").split("; layer mapping")[0]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", default="data/tts_en/raw/train.json")
    ap.add_argument("--dev", default="data/tts_en/raw/dev.json")
    ap.add_argument("--vocab", default="data/tts_en/corpus/vocab.txt")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--note", default="the machine otherwise idle", help="what else ran on the machine meanwhile")
    args = ap.parse_args()
    from offline_kd.data.corpus import Corpus
    tmp = Path(tempfile.mkdtemp(prefix="hf_student_"))
    try:
        offline_kd("data", "import", "--manifest", subset(args.train, args.limit, tmp / "train.json"),
                   "--split", "train", "--manifest", subset(args.dev, max(1, args.limit // 4), tmp / "dev.json"),
                   "--split", "dev", "--out", tmp / "corpus", "--keep-audio", "--cmvn", "utterance",
                   "--no-progress", "--vocab", args.vocab)
        corpus = Corpus(tmp / "corpus")
        train = corpus.split("train")
        seconds = float(np.diff(train.audio_offsets).sum()) / 16000
        t_params = save_model(tmp / "w2v")
        dump = {"dump": {"teacher": {"huggingface": str(tmp / "w2v")}, "corpus": str(tmp / "corpus"),
                         "output": str(tmp / "cache.zarr"), "splits": ["train", "dev"], "layers": LAYERS,
                         "batch_size": 8, "progress": False, "device": "cpu", "max_dropped_mass": 1.0,
                         "codecs": {"log_probs": "float16", "hidden": "float16"}}}
        import yaml
        (tmp / "dump.yaml").write_text(yaml.safe_dump(dump))
        with Timer() as t_dump:
            offline_kd("dump-teacher", "--config", tmp / "dump.yaml")
        info = json.loads(offline_kd("cache", "info", tmp / "cache.zarr", "--json"))
        v = len(corpus.vocab)
        hf = student(tmp, "hf", {"type": "hf", "num_layers": 2, "hidden_dim": 768, "dropout": 0.1,
                                 "init_from": str(tmp / "w2v"), "hf_config": {"mask_time_prob": 0.05}},
                     {1: LAYERS[0], 2: LAYERS[1]}, args.epochs, v)
        bl = student(tmp, "bilstm", {"type": "bilstm", "num_layers": 3, "hidden_dim": 96, "dropout": 0.1},
                     {2: LAYERS[0], 3: LAYERS[1]}, args.epochs, v)
        ratio = np.median(hf["epoch_seconds"]) / np.median(bl["epoch_seconds"])
        frames = int(info["frames"])
        mb = info["bytes_total"] / 1e6
        lines = [
            "## The hf student on tts_en from a wav2vec2-base-size teacher (plumbing and cost)\n",
            f"`{command_line()}`\n",
            f"Machine: {machine()}. tts_en's first {len(train)} train utterances ({seconds / 60:.1f} min of audio) and "
            f"{len(corpus.split('dev'))} dev, imported with `--keep-audio`. Teacher: `Wav2Vec2ForCTC`, transformers' "
            f"default config, {t_params / 1e6:.1f}M parameters, **randomly initialised** (no pretrained weights are "
            f"reachable here: its targets carry no knowledge, so the dev WERs below say only that the path runs). "
            f"Cache: layers {LAYERS}, float16, train + dev"
            + (f", {frames:,} frames" if frames else "") + (f", {mb:.1f} MB" if mb else "") + ".\n",
            "| step | wall time (s) | figure |", "|---|---|---|",
            f"| `dump-teacher` (model load, one utterance per forward: group norm, cache written) | {t_dump.seconds:.1f} "
            f"| {seconds / t_dump.seconds:.2f} s of train audio per second (train + dev dumped) |",
            f"| hf student: {hf['student_line']} | {hf['wall']:.1f} | "
            f"{np.median(hf['epoch_seconds']):.1f} s/epoch, {np.median(hf['frames_per_second']):.0f} feature "
            f"frames/s; dev WER {hf['dev_wer']:.1f}% after {args.epochs} epoch(s) |",
            f"| BiLSTM student (tts_en's): {bl['student_line']} | {bl['wall']:.1f} | "
            f"{np.median(bl['epoch_seconds']):.1f} s/epoch, {np.median(bl['frames_per_second']):.0f} feature "
            f"frames/s; dev WER {bl['dev_wer']:.1f}% |",
            f"\nThe hf student's epoch takes **{ratio:.1f}x** the BiLSTM's (one run each, one after another, on the "
            f"same cache and batches of 8; wall times include start-up and the dev evaluation; {args.note}). Its "
            f"size is the "
            f"teacher's width (768) with 2 of its 12 layers and its whole convolutional feature encoder, as "
            f"DistilHuBERT's; a smaller one sets `hidden_dim`, `hf_config.conv_dim` and no `init_from`.",
        ]
        write_section("hf-student", "\n".join(lines))
        print("\n".join(lines))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
