"""`offline-kd export`: a checkpoint as ONNX (for onnxruntime and sherpa-onnx) or TorchScript, checked before it
is handed over.

The graph: x (N, T, C) filterbank frames as the model's front end computes them, before normalisation, and
x_lens (N,) int64 -> the recorded normalisation (global CMVN as constants, or per utterance over its valid
frames) -> the model -> log_probs (N, T', V), log_probs_len (N,). Dynamic batch and time axes.

A model that reads waveforms (`model.type: hf`) takes samples (N, S) float32 in [-1, 1) at 16 kHz and samples_lens
(N,) int64 instead (the graph normalises each utterance's samples as the model does). sherpa-onnx has no model kind
that reads raw samples: such an export is for onnxruntime (or TorchScript). A group-norm feature encoder (wav2vec2-
base's) normalises over the whole input, so its graph has a fixed batch of one utterance (N = 1).

That is the input and output convention of sherpa-onnx's zipformer-CTC model kind (`sherpa-onnx-offline
--zipformer-ctc-model=model.onnx --tokens=tokens.txt`, `OfflineRecognizer.from_zipformer_ctc`): it computes Kaldi
fbank with kaldi-native-fbank, pads with log(1e-10), passes the lengths, and takes the CTC output as log-probs.
Its front end is lhotse's (samples in [-1, 1], no snip_edges, mel bank to 7,600 Hz at 16 kHz): a model trained on
`data import --fbank-preset lhotse` features gets exactly its own features from the sherpa-onnx command line; any
other fbank options are set through the Python API (`sherpa_feature_config`), which takes all of them.

`tokens.txt` is sherpa-onnx's (`symbol id` a line): the blank as `<blk>`, the word separator (or, for word units,
the start of every unit) as `▁`, which sherpa-onnx turns into a space. `--int8` adds `model.int8.onnx`, onnxruntime's
dynamic int8 quantisation of the weights (LSTM, MatMul). The export compares onnxruntime's log-probs with PyTorch's
on a few utterances before it returns.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from offline_kd import __version__
from offline_kd.data.corpus import Corpus
from offline_kd.atomic import atomic_directory
from offline_kd.data.frontend import FBANK_PRESETS, FbankOptions
from offline_kd.errors import OfflineKDError
from offline_kd.inference.model import SpeechModel, load_model
from offline_kd.models.interface import reads_waveform

#: max |log-prob| difference allowed between onnxruntime (fp32) and PyTorch on valid frames: float32 rounding of
#: another kernel order through a few layers of matrix products and LSTM steps is ~1e-5; 1e-3 leaves room for
#: long utterances while still catching any real difference (a wrong mask or weight moves log-probs by >> 0.01)
ONNX_TOLERANCE = 1e-3
OPSET = 17
BLANK_SYMBOL = "<blk>"
WORD_START = "\u2581"   # ▁


class FeatureNormalization(nn.Module):
    """The front end's normalisation inside the graph: none, global (constants) or per utterance (valid frames)."""

    def __init__(self, kind: str, mean: Optional[np.ndarray] = None, std: Optional[np.ndarray] = None):
        super().__init__()
        self.kind = kind
        dim = 0 if mean is None else len(mean)
        self.register_buffer("mean", torch.tensor(mean if mean is not None else [], dtype=torch.float32).view(dim))
        self.register_buffer("std", torch.tensor(std if std is not None else [], dtype=torch.float32).view(dim))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.kind == "global":
            return (x - self.mean) / self.std
        if self.kind == "utterance":
            mask = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]).to(x.dtype)[..., None]
            n = lengths.to(x.dtype)[:, None, None]
            mean = (x * mask).sum(1, keepdim=True) / n
            var = (((x - mean) * mask) ** 2).sum(1, keepdim=True) / n
            return (x - mean) / var.sqrt().clamp_min(1e-5)
        return x


class ExportGraph(nn.Module):
    """x (N, T, C) raw features, x_lens (N,) -> log_probs (N, T', V), log_probs_len (N,)."""

    def __init__(self, speech_model: SpeechModel):
        super().__init__()
        fe = speech_model.frontend
        self.normalize = FeatureNormalization(fe.cmvn_kind, fe.mean, fe.std) if fe is not None \
            and not reads_waveform(speech_model.model) else FeatureNormalization("none")
        exportable = getattr(speech_model.model, "exportable", None)
        if exportable is None:
            raise OfflineKDError(f"model type {speech_model.model.model_type!r} cannot be exported (no exportable())")
        self.model = exportable()
        self.waveform = reads_waveform(speech_model.model)
        self.one_at_a_time = bool(getattr(self.model, "one_at_a_time", False))
        self.input_names = ["samples", "samples_lens"] if self.waveform else ["x", "x_lens"]

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor):
        return self.model(self.normalize(x, x_lens), x_lens)


@dataclass
class ExportResult:
    """What `export_model` wrote and how it checked."""
    out_dir: str
    files: dict = field(default_factory=dict)           # {"onnx": path, "int8": path, "torchscript": path, ...}
    sizes: dict = field(default_factory=dict)           # {name: bytes}
    check: dict = field(default_factory=dict)           # {"max_abs_diff", "utterances", "greedy_equal", ...}
    sherpa: dict = field(default_factory=dict)          # {"command_line_exact": bool, "why": [...], "command": str}


def tokens_txt(vocab) -> str:
    """sherpa-onnx's tokens.txt for an offline-kd vocabulary."""
    lines = []
    for i, t in enumerate(vocab.tokens):
        if i == 0:
            sym = BLANK_SYMBOL
        elif vocab.tokenizer == "char":
            sym = WORD_START if t == vocab.word_separator else t
        elif vocab.tokenizer == "bpe":
            sym = t                                  # sentencepiece pieces, "▁" starting a word, as sherpa-onnx reads
        else:
            sym = WORD_START + t
        if not sym or any(c.isspace() for c in sym):
            raise OfflineKDError(f"vocabulary token {i} ({t!r}) holds white space: tokens.txt cannot carry it")
        lines.append(f"{sym} {i}")
    return "\n".join(lines) + "\n"


def sherpa_compatibility(options: Optional[FbankOptions]) -> tuple[list[str], dict]:
    """(what sherpa-onnx's command line would compute differently from this front end, the FeatureExtractorConfig
    settings that make its Python API compute exactly this front end)."""
    if options is None:
        return (["the model reads precomputed features, not audio"], {})
    lhotse = FbankOptions(**FBANK_PRESETS["lhotse"])
    why = []
    for name in ("snip_edges", "normalize_samples", "dither", "frame_length_ms", "frame_shift_ms", "window_type",
                 "preemph_coeff"):
        if getattr(options, name) != getattr(lhotse, name):
            why.append(f"{name} {getattr(options, name)} (sherpa-onnx: {getattr(lhotse, name)})")
    config = {"sampling_rate": options.sample_rate, "feature_dim": options.num_mel_bins,
              "low_freq": options.low_freq, "high_freq": options.high_freq, "dither": options.dither,
              "normalize_samples": options.normalize_samples, "snip_edges": options.snip_edges}
    return why, config


def _trace_inputs(graph: ExportGraph, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if graph.waveform:       # 1 s and 0.6 s of noise (one utterance for a graph of one)
        n = 1 if graph.one_at_a_time else 2
        return 0.1 * torch.randn(n, 16000, generator=g), torch.tensor([16000, 9600][:n], dtype=torch.long)
    return torch.randn(2, 50, dim, generator=g), torch.tensor([50, 31], dtype=torch.long)


def _export_onnx(graph: ExportGraph, dim: int, path: Path, metadata: dict) -> None:
    import onnx
    x, lens = _trace_inputs(graph, dim)
    a, b = graph.input_names
    batch = {} if graph.one_at_a_time else {0: "N"}
    tmp = path.with_name(path.name + ".partial")
    # torch warns that an LSTM traced at batch 2 may fail at other batch sizes when its initial states are baked
    # in: ours are not (ONNX's LSTM defaults them to zeros for any batch; tests run batches of 1 to 30)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size other than 1")
        torch.onnx.export(graph, (x, lens), str(tmp), input_names=[a, b],
                          output_names=["log_probs", "log_probs_len"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={a: {**batch, 1: "T"}, b: batch, "log_probs": {**batch, 1: "T_out"},
                                        "log_probs_len": batch})
    m = onnx.load(str(tmp))
    for k, v in metadata.items():
        entry = m.metadata_props.add()
        entry.key, entry.value = k, v if isinstance(v, str) else json.dumps(v)
    onnx.save(m, str(tmp))
    os.replace(tmp, path)


def _quantize(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    tmp = dst.with_name(dst.name + ".partial")
    quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8)
    os.replace(tmp, dst)


def _onnx_log_probs(path: Path, feats: Sequence[np.ndarray], graph: Optional[ExportGraph] = None) -> list[np.ndarray]:
    """log-probs (T', V) of each utterance from onnxruntime, one batch padded as sherpa-onnx pads (samples, for the
    `graph` of a model that reads them: with zeros; a graph of one utterance: one at a time)."""
    waveform, one = (graph.waveform, graph.one_at_a_time) if graph is not None else (False, False)
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    out = []
    for group in ([[f] for f in feats] if one else [list(feats)]):
        x, lens = _padded(group, 0.0 if waveform else np.log(1e-10))
        lp, lp_len = sess.run(None, dict(zip(["samples", "samples_lens"] if waveform else ["x", "x_lens"], (x, lens))))
        out += [lp[b, :n] for b, n in enumerate(lp_len.tolist())]
    return out


def _padded(feats: Sequence[np.ndarray], value: float) -> tuple[np.ndarray, np.ndarray]:
    """(N, T, ...) float32 padded with `value`, (N,) int64 lengths."""
    lens = np.array([f.shape[0] for f in feats], dtype=np.int64)
    x = np.full((len(feats), int(lens.max()), *feats[0].shape[1:]), value, dtype=np.float32)
    for i, f in enumerate(feats):
        x[i, :f.shape[0]] = f
    return x, lens


def _compare(name: str, ours: list[np.ndarray], theirs: list[np.ndarray], tolerance: Optional[float]) -> dict:
    """Max |difference| of log-probs on valid frames and whether the greedy paths agree; with a tolerance, an
    OfflineKDError when it is exceeded or a length differs."""
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if a.shape != b.shape:
            raise OfflineKDError(f"export check ({name}): utterance {i}: PyTorch gives {a.shape} log-probs, "
                                 f"onnxruntime {b.shape}")
    diff = max(float(np.abs(a - b).max()) for a, b in zip(ours, theirs) if a.size)
    agree = float(np.mean(np.concatenate([a.argmax(-1) == b.argmax(-1) for a, b in zip(ours, theirs)])))
    if tolerance is not None and not diff <= tolerance:
        raise OfflineKDError(f"export check ({name}): onnxruntime's log-probs differ from PyTorch's by up to "
                             f"{diff:.3g} (tolerance {tolerance:g}); the export is not written")
    return {"max_abs_diff": diff, "argmax_agreement": agree}


def check_features(m: SpeechModel, corpus: Optional[str], n: int = 4) -> tuple[list[np.ndarray], str]:
    """A few utterances' raw (unnormalised) features for the export check: from the front end on a corpus's
    kept audio, or the corpus's features for a model of precomputed features, else seeded random frames. For a
    model that reads waveforms: the kept audio's samples in [-1, 1), else seeded noise."""
    c = corpus or ((m.checkpoint_config or {}).get("data", {}) or {}).get("corpus")
    if reads_waveform(m.model):
        return _check_samples(c, n)
    if c and (Path(c) / "corpus.json").is_file():
        corp = Corpus(c)
        for split in ("dev", "test", "train"):
            if (corp.dir / f"{split}.h5").is_file():
                r = corp.split(split)
                idx = list(range(min(n, len(r))))
                if m.frontend is None:
                    return [r.features(i) for i in idx], f"{corp.dir}/{split}.h5"
                if r.has_audio:
                    return [m.frontend.fbank.compute(r.audio(i)) for i in idx], f"{corp.dir}/{split}.h5 (audio)"
                break
    g = np.random.default_rng(0)
    dim = m.model.input_dim
    shift = 0.0 if m.frontend is None or m.frontend.cmvn_kind != "none" else 10.0
    return [g.standard_normal((t, dim)).astype(np.float32) + shift for t in (400, 257, 120, 33)], "random frames"


def _check_samples(corpus: Optional[str], n: int) -> tuple[list[np.ndarray], str]:
    if corpus and (Path(corpus) / "corpus.json").is_file():
        corp = Corpus(corpus)
        for split in ("dev", "test", "train"):
            if (corp.dir / f"{split}.h5").is_file() and corp.split(split).has_audio:
                r = corp.split(split)
                return ([r.audio(i).astype(np.float32) / 32768.0 for i in range(min(n, len(r)))],
                        f"{corp.dir}/{split}.h5 (audio)")
    g = np.random.default_rng(0)
    return [(0.1 * g.standard_normal(s)).astype(np.float32) for s in (24000, 16000, 9000, 4000)], "random samples"


def export_model(checkpoint: str, out_dir: str, *, fmt: str = "onnx", int8: bool = False,
                 corpus: Optional[str] = None, log=print) -> ExportResult:
    """Export a checkpoint into `out_dir` (created; must not hold an earlier export): ONNX (+ int8) with
    tokens.txt and the sherpa-onnx settings, or TorchScript. Checked against PyTorch before it returns."""
    if fmt not in ("onnx", "torchscript"):
        raise OfflineKDError(f"--format must be onnx or torchscript, got {fmt!r}")
    if int8 and fmt != "onnx":
        raise OfflineKDError("--int8 is an ONNX quantisation: use it with --format onnx")
    m = load_model(checkpoint, device="cpu", corpus=corpus, log=log)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise OfflineKDError(f"{out} exists and is not empty; export into a new directory")
    graph = ExportGraph(m).eval()
    feats, source = check_features(m, corpus)
    with torch.no_grad():       # PyTorch's side: the transcribe path (normalisation in numpy, the model's forward)
        ours = m.forward_features([f if graph.waveform else _normalised(m, f) for f in feats])
    res = ExportResult(str(out))
    with atomic_directory(out, out.with_name(f".{out.name}.exporting")) as work:
        if fmt == "onnx":
            _write_onnx(m, graph, work, res, int8, feats, ours, source)
        else:
            _write_torchscript(m, graph, work, res, feats, ours, source)
        (work / "tokens.txt").write_text(tokens_txt(m.vocab), encoding="utf-8")
        (work / "frontend.json").write_text(json.dumps(_frontend_record(m), indent=2) + "\n")
    if graph.waveform and fmt == "onnx":
        log("sherpa-onnx: none of its model kinds reads raw samples; run model.onnx with onnxruntime (its input: "
            "frontend.json)")
    res.files = {k: str(out / Path(v).name) for k, v in res.files.items()}
    res.files["tokens"] = str(out / "tokens.txt")
    res.sizes = {k: os.path.getsize(v) for k, v in res.files.items()}
    return res


def _normalised(m: SpeechModel, raw: np.ndarray) -> np.ndarray:
    return m.frontend.normalise(raw) if m.frontend is not None else raw


def _frontend_record(m: SpeechModel) -> dict:
    return {"frontend": m.frontend.record if m.frontend is not None else None,
            "input": (f"samples (N, S) float32 in [-1, 1) at {m.sample_rate} Hz (the graph normalises each "
                      f"utterance), samples_lens (N,) int64"
                      + ("; N = 1 (a group-norm feature encoder)" if getattr(m.model, "batched", True) is False
                         else "") if reads_waveform(m.model) else
                      "x (N, T, C): filterbank frames before normalisation (the graph normalises), x_lens (N,) int64"),
            "output": "log_probs (N, T', V) log-softmax, blank 0; log_probs_len (N,)",
            "subsampling_factor": m.model.subsampling, "frame_seconds": m.frame_seconds}


def _write_onnx(m: SpeechModel, graph: ExportGraph, work: Path, res: ExportResult, int8: bool, feats, ours,
                source: str) -> None:
    meta = {"offline_kd_version": __version__, "offline_kd_model": m.model.model_type,
            "vocab_size": str(len(m.vocab)), "subsampling_factor": str(m.model.subsampling),
            "frontend": m.frontend.record if m.frontend is not None else "precomputed features",
            "comment": "CTC log-probs; input: " + _frontend_record(m)["input"]}
    onnx_path = work / "model.onnx"
    _export_onnx(graph, m.model.input_dim, onnx_path, meta)
    res.files["onnx"] = str(onnx_path)
    res.check["fp32"] = {**_compare("fp32", ours, _onnx_log_probs(onnx_path, feats, graph), ONNX_TOLERANCE),
                         "tolerance": ONNX_TOLERANCE}
    if int8:
        q = work / "model.int8.onnx"
        _quantize(onnx_path, q)
        res.files["int8"] = str(q)
        res.check["int8"] = _compare("int8", ours, _onnx_log_probs(q, feats, graph), None)
    res.check["utterances"], res.check["source"] = len(feats), source
    if graph.waveform:          # no sherpa-onnx model kind reads raw samples
        return
    why, config = sherpa_compatibility(m.frontend.options if m.frontend is not None else None)
    args = f"--sample-rate={config.get('sampling_rate', 16000)} --feat-dim={m.model.input_dim}"
    if config and (config["low_freq"], config["high_freq"]) != (20.0, -400.0):
        args += f" --low-freq={config['low_freq']:g} --high-freq={config['high_freq']:g}"
    res.sherpa = {"command_line_exact": not why, "why": why, "feature_config": config,
                  "command": f"sherpa-onnx-offline --zipformer-ctc-model=model.onnx --tokens=tokens.txt {args} "
                             f"--num-threads=1 a.wav"}
    (work / "sherpa-onnx.json").write_text(json.dumps(res.sherpa, indent=2) + "\n")


def _write_torchscript(m: SpeechModel, graph: ExportGraph, work: Path, res: ExportResult, feats, ours,
                       source: str) -> None:
    x, lens = _trace_inputs(graph, m.model.input_dim)
    with torch.no_grad():
        traced = torch.jit.trace(graph, (x, lens))
    path = work / "model.pt"
    traced.save(str(path))
    loaded = torch.jit.load(str(path))
    theirs = []
    for group in ([[f] for f in feats] if graph.one_at_a_time else [list(feats)]):
        xb, lens = _padded(group, 0.0)
        with torch.no_grad():
            lp, lp_len = loaded(torch.from_numpy(xb), torch.from_numpy(lens))
        theirs += [lp[b, :n].numpy() for b, n in enumerate(lp_len.tolist())]
    res.files["torchscript"] = str(path)
    res.check["torchscript"] = {**_compare("torchscript", ours, theirs, ONNX_TOLERANCE), "tolerance": ONNX_TOLERANCE}
    res.check["utterances"], res.check["source"] = len(feats), source
