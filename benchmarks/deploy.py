"""The student where it is used: real-time factor, size and WER of the distilled student against its teacher
(PyTorch), and of its ONNX exports (fp32, int8, through onnxruntime) against PyTorch, on the same audio.

    python benchmarks/deploy.py --student runs/tts_en/distilled/checkpoint_best.pt \\
        --teacher runs/tts_en/teacher/checkpoint_best.pt --manifest data/tts_en/raw/test.json [--repeats 3]

One thread everywhere (torch and onnxruntime), one utterance at a time (what a server or a device does per
request). Every repeat decodes the audio once (soundfile + soxr, as `transcribe` does), computes the front end
(kaldi-native-fbank through offline-kd's `FrontEnd`, and kaldi-native-fbank alone on the same samples), then runs
each model in turn on the same features: the figures are side by side in one run, the median over the repeats.
Real-time factor = (front end + model + greedy search) / audio seconds. WER is greedy, against the manifest's
transcripts; the exports' texts are also compared with PyTorch's, utterance by utterance.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import kaldi_native_fbank as knf
import numpy as np
import torch

from _common import command_line, machine, median, write_section
from offline_kd.data.audio import load
from offline_kd.decoding.metrics import error_rates
from offline_kd.inference.audio_input import from_manifests
from offline_kd.inference.export import export_model
from offline_kd.inference.model import load_model
from offline_kd.models.interface import count_parameters


def knf_alone(options, samples: np.ndarray) -> np.ndarray:
    """kaldi-native-fbank called directly on the samples (the front end's own speed)."""
    fb = knf.OnlineFbank(options.knf())
    x = samples.astype(np.float32) / (32768.0 if options.normalize_samples else 1.0)
    fb.accept_waveform(float(options.sample_rate), x.tolist())
    fb.input_finished()
    return np.stack([fb.get_frame(i) for i in range(fb.num_frames_ready)])


def onnx_session(path: Path):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def greedy_text(vocab, lp: np.ndarray) -> str:
    best = lp.argmax(-1)
    ids = [int(k) for i, k in enumerate(best) if k != 0 and (i == 0 or k != best[i - 1])]
    return vocab.decode(ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", required=True)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--manifest", required=True, help="Audio with transcripts (NeMo JSONL, lhotse, list).")
    ap.add_argument("--utterances", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", default=None, help="Where the exports go (default: a temporary directory).")
    ap.add_argument("--section", default="deploy")
    args = ap.parse_args()
    torch.set_num_threads(1)
    student, teacher = load_model(args.student), load_model(args.teacher)
    if student.frontend.record != teacher.frontend.record:
        raise SystemExit("the student and the teacher were trained on other front ends: not the same audio path")
    utts = from_manifests([args.manifest])[:args.utterances]
    refs = [u.reference for u in utts]
    work = Path(args.work or tempfile.mkdtemp(prefix="deploy_"))
    exp = work / "export"
    if not (exp / "model.int8.onnx").is_file():
        export_model(args.student, str(exp), fmt="onnx", int8=True, log=lambda *_: None)
    sessions = {"onnx fp32": onnx_session(exp / "model.onnx"), "onnx int8": onnx_session(exp / "model.int8.onnx")}
    fe = student.frontend
    names = ["teacher (PyTorch)", "student (PyTorch)", "student onnx fp32", "student onnx int8"]
    times = {k: [] for k in ["decode", "frontend", "knf alone"] + names}
    texts: dict[str, list[str]] = {}
    audio_seconds = 0.0
    for rep in range(args.repeats):
        samples, t = [], time.perf_counter()
        for u in utts:
            samples.append(load(u.spec, fe.sample_rate))
        times["decode"].append(time.perf_counter() - t)
        audio_seconds = sum(s.size for s in samples) / fe.sample_rate
        t = time.perf_counter()
        raw = [fe.fbank.compute(s) for s in samples]
        feats = [fe.normalise(r) for r in raw]
        times["frontend"].append(time.perf_counter() - t)
        t = time.perf_counter()
        for s in samples:
            knf_alone(fe.options, s)
        times["knf alone"].append(time.perf_counter() - t)
        for name in names:
            out, t = [], time.perf_counter()
            if "PyTorch" in name:
                m = teacher if name.startswith("teacher") else student
                with torch.no_grad():
                    for f in feats:
                        out.append(greedy_text(m.vocab, m.forward_features([f])[0]))
            else:
                sess = sessions[name.replace("student ", "")]
                for r in raw:
                    lp, n = sess.run(None, {"x": r[None], "x_lens": np.array([r.shape[0]], dtype=np.int64)})
                    out.append(greedy_text(student.vocab, lp[0, :int(n[0])]))
            times[name].append(time.perf_counter() - t)
            texts[name] = out
    med = {k: median(v) for k, v in times.items()}
    size = {"teacher (PyTorch)": sum(p.numel() * 4 for p in teacher.model.parameters()),
            "student (PyTorch)": sum(p.numel() * 4 for p in student.model.parameters()),
            "student onnx fp32": os.path.getsize(exp / "model.onnx"),
            "student onnx int8": os.path.getsize(exp / "model.int8.onnx")}
    params = {"teacher (PyTorch)": count_parameters(teacher.model),
              "student (PyTorch)": count_parameters(student.model)}
    base = texts["student (PyTorch)"]
    rows = ["| model | parameters | size on disk (MB) | model + search s | RTF with front end | x student PyTorch "
            "(speed) | WER greedy | texts equal to student PyTorch |", "|---|---|---|---|---|---|---|---|"]
    for name in names:
        rtf = (med["frontend"] + med[name]) / audio_seconds
        wer = error_rates(refs, texts[name])["wer"]
        same = sum(a == b for a, b in zip(texts[name], base))
        rows.append(f"| {name} | {params.get(name, params['student (PyTorch)']):,} | {size[name] / 1e6:.2f} | "
                    f"{med[name]:.2f} | {rtf:.4f} | {med['student (PyTorch)'] / med[name]:.2f} | {wer:.2f} | "
                    f"{same}/{len(base)} |")
    body = "\n".join([
        "## Deployment: the student against its teacher, and its ONNX exports (#42)",
        "",
        f"`{command_line()}`",
        "",
        f"{machine()}; onnxruntime 1 thread; {len(utts)} utterances, {audio_seconds / 60:.1f} min of audio, one "
        f"at a time; median of {args.repeats} repeats, every figure measured side by side in each repeat.",
        "Size on disk: float32 weights for PyTorch (the checkpoint file also holds the optimizer state), the file "
        "for ONNX.",
        "",
        *rows,
        "",
        f"Front end (kaldi-native-fbank through offline-kd's `FrontEnd`, normalisation included): "
        f"{med['frontend']:.2f} s, {100 * med['frontend'] / (med['frontend'] + med['student (PyTorch)']):.0f}% of "
        f"the student's PyTorch time; kaldi-native-fbank alone on the same samples: {med['knf alone']:.2f} s "
        f"(offline-kd's front end at {med['knf alone'] / med['frontend']:.2f}x its speed). Decoding the files "
        f"(soundfile + soxr to 16 kHz, not in the RTF): {med['decode']:.2f} s.",
    ])
    write_section(args.section, body)


if __name__ == "__main__":
    main()
