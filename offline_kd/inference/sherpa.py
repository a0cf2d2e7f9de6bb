"""sherpa-onnx for an `offline-kd export` directory: its recogniser with the front end the model was trained on.

sherpa-onnx's zipformer-CTC kind reads the exported `model.onnx` + `tokens.txt`. Its command line sets only the
sample rate, number of bins and mel-bank edges; its Python API takes every fbank option this module needs
(`snip_edges`, the sample scale), which `export` writes to `sherpa-onnx.json`:

    from offline_kd.inference.sherpa import recognizer, transcribe_files
    rec = recognizer("exported")
    texts = transcribe_files(rec, ["a.wav", "b.wav"])
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf

from offline_kd.errors import OfflineKDError


def recognizer(export_dir: str, *, int8: bool = False, num_threads: int = 1):
    """A `sherpa_onnx.OfflineRecognizer` for the export in `export_dir`, with its recorded feature settings."""
    import sherpa_onnx
    from sherpa_onnx.lib._sherpa_onnx import OfflineRecognizer as _Recognizer
    d = Path(export_dir)
    model = d / ("model.int8.onnx" if int8 else "model.onnx")
    settings_path = d / "sherpa-onnx.json"
    for p in (model, d / "tokens.txt", settings_path):
        if not p.is_file():
            raise OfflineKDError(f"{p}: missing (not an `offline-kd export --format onnx` directory?)")
    config = json.loads(settings_path.read_text()).get("feature_config") or {}
    if not config:
        raise OfflineKDError(f"{export_dir}: the model reads precomputed features; sherpa-onnx computes features "
                             f"from audio, so it cannot run this model")
    rec = sherpa_onnx.OfflineRecognizer.from_zipformer_ctc(
        model=str(model), tokens=str(d / "tokens.txt"), num_threads=num_threads,
        sample_rate=int(config["sampling_rate"]), feature_dim=int(config["feature_dim"]))
    feat = rec.config.feat_config
    for key, value in config.items():
        setattr(feat, key, value)
    rec.recognizer = _Recognizer(rec.config)      # rebuilt with the full feature config
    return rec


def transcribe_files(rec, paths: Sequence[str]) -> list[str]:
    """Texts of audio files (read with soundfile as floats in [-1, 1], sherpa-onnx's convention), in order."""
    streams = []
    for p in paths:
        samples, rate = sf.read(str(p), dtype="float32", always_2d=True)
        s = rec.create_stream()
        s.accept_waveform(rate, np.ascontiguousarray(samples.mean(axis=1)))
        streams.append(s)
    rec.decode_streams(streams)
    return [" ".join(s.result.text.split()) for s in streams]
