"""A Hugging Face teacher the size of wav2vec2-base (about 95M parameters, randomly initialised, nothing downloaded):
dump throughput against the teacher's bare forward, and what the cache buys an ablation with such a teacher.

    python benchmarks/hf_teacher.py --manifest data/tts_en/raw/dev.json --vocab data/tts_en/corpus/vocab.txt \
        --limit 120 --runs 3 --students 2

1. The manifest (NeMo JSONL) is imported with `data import --keep-audio --cmvn utterance` into a temporary corpus
   (the first `--limit` rows).
2. A `Wav2Vec2ForCTC` with transformers' default config (12 layers of 768, conv front end, group norm: one utterance
   per forward) and wav2vec2-base-960h's 32-token English character vocabulary (<pad> the blank, | the word
   delimiter, upper case: mapped onto the corpus's lower-case characters) is saved into a temporary directory.
3. Side by side, `--runs` times: (a) the bare forward, transformers' own: per utterance, the samples normalised as
   its feature extractor does, `model(x, output_hidden_states=True)`, log-softmax and the cached layers moved to host
   memory, nothing stored; (b) `dump-teacher` of the same utterances with float16 codecs into a fresh cache. The
   median frames/s of each and their ratio go to the section `hf-teacher-dump`.
4. With `--students N`: benchmarks/ablation_cost.py on this teacher and corpus (one dump + N students from the cache
   against N students with `--online-teacher`), section `hf-ablation-cost`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

from _common import Timer, command_line, machine, median, write_section

HERE = Path(__file__).resolve().parent
# facebook/wav2vec2-base-960h's vocabulary, in its order
W2V_VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", "E", "T", "A", "O", "N", "I", "H", "S", "R", "D", "L", "U", "M",
             "W", "C", "F", "G", "Y", "P", "B", "V", "K", "'", "X", "J", "Q", "Z"]


def offline_kd(*args):
    p = subprocess.run([sys.executable, "-m", "offline_kd", *map(str, args)], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"offline-kd {' '.join(map(str, args))} failed:\n{p.stdout[-1500:]}{p.stderr[-1500:]}")
    return p.stdout


def synthetic(d: Path, n: int, seed: int = 0) -> Path:
    """n WAV files at 16 kHz (2-5 s of tones in noise) and their NeMo manifest, with texts over a-z and '."""
    import soundfile as sf
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True)
    letters = list("abcdefghijklmnopqrstuvwxyz'")
    rows = []
    for i in range(n):
        sec = float(rng.uniform(2, 5))
        t = np.arange(int(sec * 16000)) / 16000
        x = 0.1 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + 0.02 * rng.standard_normal(t.size)
        sf.write(str(d / f"u{i}.wav"), x.astype(np.float32), 16000, subtype="PCM_16")
        text = " ".join("".join(rng.choice(letters, size=int(rng.integers(2, 7)))) for _ in range(int(sec * 2)))
        rows.append(json.dumps({"audio_filepath": str(d / f"u{i}.wav"), "duration": sec, "text": text}))
    (d / "manifest.json").write_text("\n".join(rows) + "\n")
    return d / "manifest.json"


def save_model(d: Path, seed: int = 0) -> int:
    import transformers
    torch.manual_seed(seed)
    cfg = transformers.Wav2Vec2Config(vocab_size=len(W2V_VOCAB), pad_token_id=0)
    model = transformers.Wav2Vec2ForCTC(cfg).eval()
    model.save_pretrained(str(d), safe_serialization=True)
    (d / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(W2V_VOCAB)}))
    (d / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>",
                                                          "unk_token": "<unk>", "word_delimiter_token": "|"}))
    (d / "preprocessor_config.json").write_text(json.dumps({"sampling_rate": 16000, "do_normalize": True,
                                                            "feature_size": 1, "return_attention_mask": False}))
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def bare_forward(model_dir: Path, reader, order, layers, device) -> int:
    """transformers' own forward over the utterances, outputs to host; -> output frames."""
    import transformers
    model = transformers.Wav2Vec2ForCTC.from_pretrained(str(model_dir)).eval().to(device)
    frames = 0
    for i in order:
        x = reader.audio(i).astype(np.float32) / 32768.0
        x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        out = model(torch.from_numpy(x)[None].to(device), output_hidden_states=True)
        lp = torch.log_softmax(out.logits[0].float(), -1).cpu().numpy()
        _ = [out.hidden_states[L][0].cpu().numpy() for L in layers]
        frames += lp.shape[0]
    return frames


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", default=None, help="NeMo JSONL manifest of the audio (default: --limit synthetic "
                                                     "utterances of 2-5 s, tones in noise: speed does not depend on "
                                                     "what is said)")
    ap.add_argument("--limit", type=int, default=120, help="first rows of the manifest")
    ap.add_argument("--vocab", default=None, help="the corpus's vocab.txt (default: built from the rows' text; "
                                                  "it must cover the teacher's letters)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--layers", default="6,12")
    ap.add_argument("--students", type=int, default=0, help="N for the ablation-cost part (0: skip it)")
    ap.add_argument("--epochs", type=int, default=1, help="epochs of each student in the ablation-cost part")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    layers = [int(x) for x in args.layers.split(",")]
    from offline_kd.commands import dump_teacher
    from offline_kd.config import DumpConfig, build_dataclass
    from offline_kd.data.corpus import Corpus
    from offline_kd.runtime.loaders import sorted_batches
    tmp = Path(tempfile.mkdtemp(prefix="hf_teacher_"))
    try:
        if args.manifest is None:
            args.manifest = str(synthetic(tmp / "synthetic", args.limit))
        rows = Path(args.manifest).read_text().splitlines()[:args.limit]
        base = Path(args.manifest).resolve().parent
        fixed = []
        for r in rows:        # paths relative to the manifest stay valid from the copy
            row = json.loads(r)
            if not os.path.isabs(row["audio_filepath"]):
                row["audio_filepath"] = str(base / row["audio_filepath"])
            fixed.append(json.dumps(row))
        (tmp / "m.json").write_text("\n".join(fixed) + "\n")
        offline_kd("data", "import", "--manifest", tmp / "m.json", "--split", "train", "--out", tmp / "corpus",
                   "--keep-audio", "--cmvn", "utterance", "--no-progress",
                   *(["--vocab", args.vocab] if args.vocab else []))
        reader = Corpus(tmp / "corpus").split("train")
        hours = float(np.diff(reader.audio_offsets).sum()) / 16000 / 3600
        params = save_model(tmp / "w2v")
        teacher = {"huggingface": str(tmp / "w2v")}
        order = [i for b in sorted_batches(reader, np.arange(len(reader)), 8, None) for i in b]
        bare, dump = [], []
        for r in range(args.runs):
            with Timer() as t:
                frames = bare_forward(tmp / "w2v", reader, order, layers, args.device)
            bare.append(frames / t.seconds)
            out = tmp / f"c{r}.zarr"
            cfg = build_dataclass(DumpConfig, {
                "teacher": teacher, "corpus": str(tmp / "corpus"), "output": str(out), "splits": ["train"],
                "layers": layers, "batch_size": 8, "progress": False, "device": args.device,
                "codecs": {"log_probs": "float16", "hidden": "float16"}})
            with Timer() as t:
                dump_teacher.run(cfg, log=lambda *_: None)
            dump.append(frames / t.seconds)
            shutil.rmtree(out)
            print(f"run {r}: bare {bare[-1]:.1f} frames/s, dump {dump[-1]:.1f} frames/s", flush=True)
        ratio = median([d / b for d, b in zip(dump, bare)])
        write_section("hf-teacher-dump", "\n".join([
            "## A Hugging Face teacher: dump vs the bare forward (wav2vec2-base size)\n",
            f"`{command_line()}`\n",
            f"Machine: {machine()}. `Wav2Vec2ForCTC`, transformers' default config, {params / 1e6:.1f}M parameters, "
            f"randomly initialised (speed does not depend on the weights); {len(reader)} utterances, {hours * 60:.1f} "
            f"min of audio, {frames} output frames (20 ms); layers {layers}; float16 codecs; float32 forward on "
            f"{args.device}; one "
            f"utterance per forward (group norm). Median of {args.runs} runs, each run both side by side.\n",
            "| | frames/s (median) | runs |", "|---|---|---|",
            f"| bare forward (transformers, outputs to host) | {median(bare):.1f} | "
            f"{', '.join(f'{x:.1f}' for x in bare)} |",
            f"| dump-teacher (float16 codecs, includes loading the model and writing the cache) | {median(dump):.1f} | "
            f"{', '.join(f'{x:.1f}' for x in dump)} |",
            f"\nDump / bare forward: **{ratio:.3f}x** (median of the per-run ratios; goal >= 0.9x).",
        ]))
        if args.students:
            dump_yaml = tmp / "dump.yaml"
            dump_yaml.write_text(yaml.safe_dump({"dump": {
                "teacher": teacher, "corpus": str(tmp / "corpus"), "splits": ["train"], "layers": layers,
                "codecs": {"log_probs": "float16", "hidden": "float16"}}}))
            distill_yaml = tmp / "distill.yaml"
            vocab = Corpus(tmp / "corpus").vocab
            distill_yaml.write_text(yaml.safe_dump({
                "data": {"corpus": str(tmp / "corpus"), "train_split": "train", "dev_split": "train",
                         "batch_size": 16},
                "model": {"input_dim": 80, "hidden_dim": 128, "num_layers": 3, "num_classes": len(vocab)},
                "train": {"epochs": args.epochs, "lr": 0.002},
                "distill": {"layer_mapping": {2: layers[0], 3: layers[1]}, "alpha": 0.7, "beta": 0.2,
                            "gamma": 0.1}}))
            subprocess.run([sys.executable, str(HERE / "ablation_cost.py"), "--dump", str(dump_yaml), "--distill",
                            str(distill_yaml), "--students", str(args.students), "--device", args.device,
                            "--section", "hf-ablation-cost", "--caller",
                            f"{command_line()} (its temporary corpus and model)"], check=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
