#!/usr/bin/env python3
"""Synthesize the tts_en corpus: public-domain English text (the King James Bible from Debian's `bible-kjv`),
spoken by espeak-ng with several voices, variants, rates and pitches, with noise at varied SNR, written as 16-bit
FLAC files at espeak-ng's rate (22,050 Hz); one NeMo-style manifest per split (`audio_filepath`, `duration`,
`text`; the untranscribed split without text) for `offline-kd data import`, and the language-model text (every
training-partition sentence except the untranscribed ones; no dev/test sentence). Features are not made here:
`offline-kd data import` computes them (Kaldi fbank, resampled to 16 kHz).

Splits use disjoint sentences. Dev and test use two accents and two voice variants that training never hears, for
half of their utterances; the other half use training voices (new sentences).

    python recipes/tts_en/prepare.py --out data/tts_en/raw [--num-train 3000 --num-dev 300 --num-test 300]

Resumable: utterances whose audio file exists are not synthesized again. Deterministic for a given --seed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

TRAIN_VOICES = ["en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029"]
TRAIN_VARIANTS = ["m1", "m2", "m3", "m4", "f1", "f2", "f3"]
HELD_OUT_VOICES = ["en-gb-x-gbcwmd", "en-gb-x-gbclan"]
HELD_OUT_VARIANTS = ["m7", "f4"]
BOOKS = "Gen1:1-Rev22:21"


def die(msg: str) -> None:
    print(f"prepare: error: {msg}", file=sys.stderr)
    sys.exit(2)


def bible_text() -> list[str]:
    """Every KJV verse as one string, from the `bible` program (Debian package bible-kjv)."""
    exe = shutil.which("bible")
    if not exe:
        die("the `bible` program was not found: apt-get install bible-kjv (public-domain King James text)")
    out = subprocess.run([exe, "-l100000", BOOKS], capture_output=True, text=True, check=True).stdout
    verses = []
    for line in out.splitlines():
        m = re.match(r"^\s+\d+\s+(.*)$", line)
        if m:
            verses.append(m.group(1))
        elif line.strip() and verses and not line.startswith(" ") and not re.match(r"^[1-3 ]*[A-Z][a-z]+.* \d+$",
                                                                                    line):
            verses[-1] += " " + line.strip()
    if len(verses) < 1000:
        die(f"`bible` printed only {len(verses)} verses; is bible-kjv-text installed?")
    return verses


def normalise(text: str) -> str:
    text = text.lower().replace("\u2019", "'")
    text = re.sub(r"[^a-z' ]+", " ", text)
    text = re.sub(r"\s*'\s*(?![a-z])|(?<![a-z])'", " ", text)     # keep apostrophes inside words only
    return " ".join(text.split())


def sentences(verses: list[str], min_words: int, max_words: int) -> list[str]:
    """Clauses split at punctuation, short ones merged with their neighbour, normalised, deduplicated."""
    out, seen = [], set()
    for verse in verses:
        pieces, cur = [], []
        for clause in re.split(r"[.;:,?!()]", verse):
            words = normalise(clause).split()
            if not words:
                continue
            if cur and len(cur) + len(words) > max_words:
                pieces.append(cur)
                cur = []
            cur += words
            if len(cur) >= min_words:
                pieces.append(cur)
                cur = []
        if cur and pieces and len(pieces[-1]) + len(cur) <= max_words:
            pieces[-1] += cur
        for p in pieces:
            s = " ".join(p)
            if min_words <= len(p) <= max_words and s not in seen:
                seen.add(s)
                out.append(s)
    return out


def plan(args) -> tuple[list[dict], list[str]]:
    rng = random.Random(args.seed)
    sents = sentences(bible_text(), args.min_words, args.max_words)
    rng.shuffle(sents)
    need = args.num_train + args.num_dev + args.num_test
    if len(sents) < need:
        die(f"only {len(sents)} distinct sentences for {need} utterances")
    test, dev = sents[:args.num_test], sents[args.num_test:args.num_test + args.num_dev]
    train_partition = sents[args.num_test + args.num_dev:]          # LM text: never a dev/test sentence
    train = train_partition[:args.num_train]
    # untranscribed audio: further training-partition sentences, spoken by training voices; their text is not stored
    untranscribed = train_partition[args.num_train:args.num_train + args.num_untranscribed]
    if len(untranscribed) < args.num_untranscribed:
        die(f"only {len(train_partition) - args.num_train} training-partition sentences left for "
            f"{args.num_untranscribed} untranscribed utterances")
    # transcribed audio for the teacher only: still further training-partition sentences (the labelled data a
    # pretrained teacher has seen and its student has not); drawn last, so the other splits stay as they were
    first = args.num_train + args.num_untranscribed
    teacher_train = train_partition[first:first + args.num_teacher_train]
    if len(teacher_train) < args.num_teacher_train:
        die(f"only {len(train_partition) - first} training-partition sentences left for "
            f"{args.num_teacher_train} teacher-only utterances")
    rows = []
    for split, texts in (("train", train), ("dev", dev), ("test", test), ("untranscribed", untranscribed),
                         ("teacher_train", teacher_train)):
        for i, text in enumerate(texts):
            held = split in ("dev", "test") and i % 2 == 0
            if held and rng.random() < 0.5:
                voice, variant = rng.choice(HELD_OUT_VOICES), rng.choice(TRAIN_VARIANTS + HELD_OUT_VARIANTS)
            elif held:
                voice, variant = rng.choice(TRAIN_VOICES), rng.choice(HELD_OUT_VARIANTS)
            else:
                voice, variant = rng.choice(TRAIN_VOICES), rng.choice(TRAIN_VARIANTS)
            rows.append({"id": f"{split}_{i:05d}", "split": split, "text": text, "voice": voice,
                         "variant": variant, "rate": rng.randint(140, 200), "pitch": rng.randint(30, 70),
                         "snr_db": round(rng.uniform(args.snr_min, args.snr_max), 1),
                         "noise": rng.choice(["white", "brown"]), "seed": rng.getrandbits(31)})
    # the LM text: every training-partition sentence except the untranscribed ones (their LM N-best would otherwise
    # come from an LM that has seen their very text)
    hidden = set(untranscribed)
    return rows, [s for s in train_partition if s not in hidden]


def synthesize(row: dict, audio_dir: str) -> tuple[str, float]:
    """espeak-ng -> waveform + noise at the row's SNR -> 16-bit FLAC (atomic). Returns (id, seconds)."""
    out = Path(audio_dir) / f"{row['id']}.flac"
    if out.exists():
        return row["id"], sf.info(str(out)).duration
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "u.wav"
        cmd = ["espeak-ng", "-v", f"{row['voice']}+{row['variant']}", "-s", str(row["rate"]),
               "-p", str(row["pitch"]), "-w", str(wav), row["text"]]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0 or not wav.exists():
            raise RuntimeError(f"{row['id']}: espeak-ng failed: {res.stderr.strip()[:200]}")
        x, rate = sf.read(str(wav), dtype="float32")
    if x.ndim > 1:
        x = x.mean(axis=1)
    rng = np.random.default_rng(row["seed"])
    noise = rng.standard_normal(x.size).astype(np.float32)
    if row["noise"] == "brown":
        noise = np.cumsum(noise)
        noise -= np.convolve(noise, np.ones(401) / 401, mode="same")      # remove the drift, keep low tones
    speech_power = float(np.mean(x[np.abs(x) > 0.01] ** 2)) if np.any(np.abs(x) > 0.01) else 1e-4
    noise *= np.sqrt(speech_power / (np.mean(noise ** 2) + 1e-12) / 10 ** (row["snr_db"] / 10))
    y = x + noise
    y *= min(1.0, 0.95 / max(float(np.abs(y).max()), 1e-9))                 # no clipping in 16 bits
    pcm = np.clip(np.rint(y * 32768), -32768, 32767).astype(np.int16)
    tmp_out = out.with_name(out.stem + ".tmp.flac")
    sf.write(str(tmp_out), pcm, rate, subtype="PCM_16")
    os.replace(tmp_out, out)
    return row["id"], pcm.size / rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="Output folder (audio/, SPLIT.json manifests, lm_text.txt).")
    ap.add_argument("--num-train", type=int, default=3000)
    ap.add_argument("--num-dev", type=int, default=300)
    ap.add_argument("--num-test", type=int, default=300)
    ap.add_argument("--num-untranscribed", type=int, default=0,
                    help="Utterances of further training-partition sentences whose text is not kept (split "
                         "'untranscribed'; the LM text leaves them out, as it leaves out dev and test).")
    ap.add_argument("--num-teacher-train", type=int, default=0,
                    help="Transcribed utterances of further training-partition sentences for the teacher only "
                         "(split 'teacher_train').")
    ap.add_argument("--min-words", type=int, default=4)
    ap.add_argument("--max-words", type=int, default=12)
    ap.add_argument("--snr-min", type=float, default=5.0)
    ap.add_argument("--snr-max", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    if not shutil.which("espeak-ng"):
        die("espeak-ng was not found: apt-get install espeak-ng")
    out = Path(args.out)
    audio = out / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    rows, lm_text = plan(args)
    from tqdm import tqdm
    seconds = {}
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futs = [pool.submit(synthesize, r, str(audio)) for r in rows]
        for fut in tqdm(futs, desc="synthesize", unit="utt", file=sys.stderr):
            uid, sec = fut.result()
            seconds[uid] = sec
    splits = sorted({r["split"] for r in rows})
    for split in splits:                 # one NeMo manifest per split; the untranscribed rows carry no text
        tmp = out / f"{split}.json.tmp"
        with open(tmp, "w") as fh:
            for r in rows:
                if r["split"] == split:
                    text = {} if split == "untranscribed" else {"text": r["text"]}
                    fh.write(json.dumps({"audio_filepath": f"audio/{r['id']}.flac",
                                         "duration": round(seconds[r["id"]], 4), **text}) + "\n")
        os.replace(tmp, out / f"{split}.json")
    (out / "utterances.jsonl").write_text("".join(json.dumps({**r, "duration": round(seconds[r["id"]], 4)}) + "\n"
                                                  for r in rows))
    (out / "lm_text.txt").write_text("\n".join(lm_text) + "\n")
    hours = sum(seconds.values()) / 3600
    print(f"prepare: {len(rows)} utterances ({hours:.2f} h of speech), {len(lm_text)} LM sentences -> {out}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
