"""Import speed and memory of `offline-kd data import` from audio, against kaldi-native-fbank alone.

    python benchmarks/audio_import.py [--utterances 500 --runs 3 --work DIR]

Self-contained: writes --utterances utterances of tones and noise (2-12 s each, seeded) as 16-bit files: WAV and FLAC
at 16 kHz, and FLAC at 22.05 kHz (resampled to 16 kHz by the import), with a NeMo manifest each.

- Speed: seconds of audio per second of wall time per core, for (a) `offline-kd data import --jobs 1` (the whole
  job: manifest, decoding with soundfile, resampling with soxr, int16 quantization, kaldi-native-fbank, chunk files,
  HDF5 assembly with per-utterance sha256) run as a separate process, and (b) kaldi-native-fbank alone on the same
  decoded 16 kHz int16 samples (held in memory, decoded beforehand; the Fbank options the import uses). The ratio
  a / b is the share of the front end's own speed that the import keeps (goal: >= 0.8). `--jobs 2` is given per
  core as well. Each figure is the median of --runs runs, the two measured alternately in every run.
- Where the rest goes: the import's fixed start-up (an import of one 1 s utterance), soundfile + soxr decoding alone
  on the same files, and the remainder (chunk files, HDF5 assembly, per-utterance sha256).
- Memory: peak RSS of the import process (`--jobs 1`, `--keep-audio`) on the corpus (1x) and on a manifest that
  lists every utterance 10 times under new ids (10x): flat means memory does not grow with the corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from _common import command_line, median, write_section
from offline_kd.data.audio import AudioSpec, load
from offline_kd.data.frontend import Fbank, FbankOptions


def make_corpus(work: Path, n: int, rate: int, ext: str) -> tuple[Path, float]:
    d = work / f"audio{rate}{ext}"
    manifest = work / f"manifest{rate}{ext}.json"
    if manifest.is_file():
        return manifest, sum(json.loads(x)["duration"] for x in manifest.read_text().splitlines())
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        sec = float(rng.uniform(2, 12))
        t = np.arange(int(sec * rate)) / rate
        x = 0.1 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t) + 0.03 * rng.standard_normal(t.size)
        sf.write(str(d / f"u{i:05d}.{ext}"), x.astype(np.float32), rate, subtype="PCM_16")
        rows.append({"audio_filepath": str(d / f"u{i:05d}.{ext}"), "duration": round(t.size / rate, 4),
                     "text": "a b", "split": "train"})
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest, sum(r["duration"] for r in rows)


def times_ten(manifest: Path) -> Path:
    out = manifest.with_name(manifest.stem + "_x10.json")
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    out.write_text("".join(json.dumps({**r, "id": f"c{k}_{Path(r['audio_filepath']).stem}"}) + "\n"
                           for k in range(10) for r in rows))
    return out


def run_import(manifest: Path, out: Path, *extra: str) -> float:
    """Wall seconds of one import process."""
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "offline_kd", "data", "import", "--manifest", str(manifest), "--out",
                    str(out), "--no-progress", *extra], check=True, capture_output=True)
    seconds = time.perf_counter() - t
    shutil.rmtree(out, ignore_errors=True)
    return seconds


def peak_rss(manifest: Path, out: Path) -> float:
    """Peak RSS (MiB) of an import in a fresh process: measured by a wrapper so earlier children do not count."""
    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    shutil.rmtree(out, ignore_errors=True)
    p = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "offline_kd", "data", "import",
                        "--manifest", str(manifest), "--out", str(out), "--no-progress", "--keep-audio"],
                       check=True, capture_output=True, text=True)
    shutil.rmtree(out, ignore_errors=True)
    return int(p.stdout.split()[-1]) / 1024


def startup() -> float:
    """Wall seconds of an import of one 1 s utterance: the command's fixed cost (interpreter, imports, job files)."""
    d = Path(tempfile.mkdtemp(prefix="okd_startup_"))
    sf.write(str(d / "a.wav"), np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    (d / "m.json").write_text(json.dumps({"audio_filepath": str(d / "a.wav"), "text": "a", "split": "train"}) + "\n")
    seconds = run_import(d / "m.json", d / "corpus")
    shutil.rmtree(d, ignore_errors=True)
    return seconds


def decode_alone(manifest: Path) -> float:
    """Wall seconds to decode (and resample) every file of the manifest to 16 kHz int16, nothing else."""
    specs = [AudioSpec(json.loads(x)["audio_filepath"]) for x in manifest.read_text().splitlines()]
    t = time.perf_counter()
    for spec in specs:
        load(spec, 16000)
    return time.perf_counter() - t


def fbank_alone(samples: list[np.ndarray], fb: Fbank) -> float:
    t = time.perf_counter()
    for x in samples:
        fb.compute(x)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--utterances", type=int, default=500)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", default=None, help="folder for the audio (kept and reused when given)")
    ap.add_argument("--section", default="audio-import")
    args = ap.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="okd_audio_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    fb = Fbank(FbankOptions())
    rows, notes = [], []
    for rate, ext in ((16000, "wav"), (16000, "flac"), (22050, "flac")):
        manifest, seconds = make_corpus(work, args.utterances, rate, ext)
        samples = [load(AudioSpec(json.loads(x)["audio_filepath"]), 16000)
                   for x in manifest.read_text().splitlines()]
        imp, imp2, alone, dec, start = [], [], [], [], []
        for _ in range(args.runs):
            alone.append(fbank_alone(samples, fb))
            imp.append(run_import(manifest, work / "corpus"))
            dec.append(decode_alone(manifest))
            start.append(startup())
            imp2.append(run_import(manifest, work / "corpus", "--jobs", "2"))
        a, i1, i2, d, st = median(alone), median(imp), median(imp2), median(dec), median(start)
        own = i1 - st - a - d
        rows.append(f"| {rate / 1000:g} kHz {ext.upper()}{' (resampled)' if rate != 16000 else ''} | {seconds / 3600:.2f} "
                    f"| {seconds / a:,.0f} | {seconds / i1:,.0f} | **{a / i1:.2f}x** | **{a / (i1 - st):.2f}x** | "
                    f"{100 * d / i1:.0f}% | {100 * max(own, 0) / i1:.0f}% | {seconds / i2 / min(2, cores):,.0f} |")
        notes.append(f"{rate / 1000:g} kHz {ext.upper()}: fbank alone {a:.2f} s, decoding alone {d:.2f} s, import "
                     f"{i1:.2f} s (jobs 1; start-up {st:.2f} s), {i2:.2f} s (jobs 2)")
    manifest = work / "manifest16000flac.json"
    one, ten = peak_rss(manifest, work / "corpus"), peak_rss(times_ten(manifest), work / "corpus")
    total = sum(json.loads(x)["duration"] for x in manifest.read_text().splitlines())
    body = "\n".join([
        "## Audio import: `offline-kd data import` against kaldi-native-fbank alone",
        "",
        f"Command: `{command_line()}`. Machine: {cores} CPU cores. {args.utterances} utterances of 2-12 s (tones and "
        f"noise, 16-bit), 80-bin Kaldi fbank, 25 ms / 10 ms, dither 0; median of {args.runs} runs, the import "
        f"(a separate process, start-up included) and the front end alone measured alternately. Speed in seconds of "
        f"audio per second per core.",
        "",
        "| source | hours | kaldi-native-fbank alone | import, --jobs 1 | import / fbank alone (goal >= 0.8) "
        "| the same, start-up excluded | decoding + resampling, share of the import | the import's own work "
        "(chunks, HDF5, hashes), share | import, --jobs 2, per core |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Peak RSS of the import process (`--jobs 1 --keep-audio`): **{one:.0f} MiB** on {total / 3600:.2f} h (1x), "
        f"**{ten:.0f} MiB** on {10 * total / 3600:.2f} h (10x: every utterance listed 10 times under new ids); "
        f"ratio {ten / one:.2f}.",
        "",
        "Start-up: the wall time of an import of one 1 s utterance (interpreter, imports, job files), a fixed cost "
        "per command. Decoding + resampling: soundfile and soxr alone on the same files, as the import calls them. The "
        "import's own work: the rest (import minus start-up, front end and decoding).",
        "",
        "Timings: " + "; ".join(notes) + ".",
    ])
    write_section(args.section, body)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
