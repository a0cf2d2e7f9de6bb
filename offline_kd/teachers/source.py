"""Where a teacher comes from, and how it is brought to the student: `parse_teacher`, `load_teacher`, `probe`.

`dump.teacher` (and `cache verify --teacher`, `train-student --online-teacher`) is one of

  - a path to a checkpoint written by `offline-kd train` (the model type it records is rebuilt through the
    registry); the same as `{checkpoint: PATH}`;
  - `{entry_point: "my_package.teachers:load", args: {...}}`: a model in the user's own code
    (teachers/entry_point.py);
  - `{huggingface: DIR}`: a transformers Wav2Vec2ForCTC / HubertForCTC / WavLMForCTC saved in a local directory
    (teachers/huggingface.py).

A mapping may add the alignment options (teachers/alignment.py): `vocabulary_map` (a file mapping teacher tokens
to student tokens), `hidden_pooling` (mean | stack, when k teacher frames become one), `max_length_mismatch`
(frames, default 2). On the command line a mapping is given inline as YAML:
`--teacher '{huggingface: models/w2v, vocabulary_map: map.yaml}'`.

A teacher whose vocabulary is the corpus's, class for class, and whose frames are the student's is used as it is
(the bytes of the cache do not change). Any other is wrapped in an `AlignedTeacher`, and the alignment is recorded
in the cache (`cache info` prints it). A probe forward on one utterance, and for a waveform teacher a check of every
utterance's frame count, run before anything is written.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
import yaml
from torch import nn

from offline_kd.data.dataset import utterance_batch
from offline_kd.data.vocab import Vocabulary
from offline_kd.errors import OfflineKDError, TeacherForwardError
from offline_kd.models.interface import forward_batch, reads_waveform
from offline_kd.teachers.alignment import AlignedTeacher, FrameAlignment, LengthMismatch, VocabularyMap
from offline_kd.teachers.ensemble import EnsembleTeacher, ensemble_record, resolve_weights
from offline_kd.teachers.entry_point import EntryPointTeacher, call_entry_point
from offline_kd.teachers.huggingface import HFTeacher
from offline_kd.models.checkpoint import checkpoint_dev, file_sha256, model_from_checkpoint

TeacherSpec = Union[str, dict, list]
OPTIONS = ("vocabulary_map", "hidden_pooling", "max_length_mismatch")
ENTRY_POINT_OPTIONS = ("input_kind", "sample_rate")     # an entry point's: what it reads (entry_point.py)


@dataclass
class Source:
    """What a teacher source loads: the model as it is (its own tokens and frames), its tokens, blank, word
    delimiter and special tokens, the record the cache keeps (`name`: how `cache info` names it;
    `sha256_in_identity`: its file hash beyond the weights is part of the cache's identity), its dev figures and,
    for an offline-kd checkpoint, its own `Vocabulary`."""
    inner: nn.Module
    tokens: tuple
    blank: int
    delimiter: Optional[str]
    special: tuple
    record: dict
    name: str
    dev: Optional[dict] = None
    own_vocab: Optional[Vocabulary] = None


_SOURCES: dict = {}


def register_source(key: str):
    """Register `fn(spec, device, where) -> Source` for teacher specs with `key` (`{key: ...}`), as models and
    codecs register; the first registered (checkpoint) is also what a bare path means."""
    def deco(fn):
        _SOURCES[key] = fn
        return fn
    return deco


@register_source("checkpoint")
def _checkpoint(spec, device, where: str) -> Source:
    path = spec if isinstance(spec, str) else spec["checkpoint"]
    if not Path(path).is_file():
        raise OfflineKDError(f"{where}: teacher checkpoint not found: {path}")
    inner, own_vocab, ckpt = model_from_checkpoint(path, device)
    return Source(inner, own_vocab.tokens, 0, own_vocab.word_separator, (),
                  {"path": str(path), "sha256": file_sha256(path), "name": f"checkpoint {path}"}, str(path),
                  checkpoint_dev(ckpt), own_vocab)


@register_source("entry_point")
def _entry_point(spec, device, where: str) -> Source:
    inner = EntryPointTeacher(call_entry_point(spec, where), spec, where).to(device).eval()
    record = {"path": f"entry_point:{spec['entry_point']}", "sha256": spec_sha256(spec),
              "adapter": "entry_point", "entry_point": spec["entry_point"], "args": spec["args"],
              "name": f"entry point {spec['entry_point']} (args in the cache's metadata)",
              **{k: spec[k] for k in ENTRY_POINT_OPTIONS if k in spec}}
    return Source(inner, inner.tokens, inner.blank, inner.word_delimiter, inner.special, record, teacher_name(spec))


@register_source("huggingface")
def _huggingface(spec, device, where: str) -> Source:
    inner = HFTeacher(spec["huggingface"], where).to(device).eval()
    record = {"path": str(spec["huggingface"]), "sha256": inner.sha256, "adapter": "huggingface",
              "huggingface_model_type": inner.kind, "name": f"Hugging Face model {spec['huggingface']}",
              "sha256_in_identity": True}
    return Source(inner, inner.tokens, inner.blank, inner.word_delimiter, inner.special, record, teacher_name(spec))


@dataclass
class LoadedTeacher:
    model: nn.Module          # follows models/interface.py's CTCModel, in the student's vocabulary and frames
    vocab: Vocabulary
    record: dict              # what the cache's metadata records about where the teacher came from
    dev: Optional[dict]       # its own dev figures, when its checkpoint recorded them
    name: str                 # for messages
    members: tuple = ()       # an ensemble's members, each a LoadedTeacher (teachers/ensemble.py)

    @property
    def input_kind(self) -> str:
        return "waveform" if reads_waveform(self.model) else "features"


def parse_teacher(value: Any, where: str = "dump.teacher") -> TeacherSpec:
    """A checkpoint path, or a mapping naming one source (given as a mapping, or as inline YAML text), or several
    teachers as one: a list of those, or {ensemble: [...], weights: ...} (teachers/ensemble.py)."""
    if isinstance(value, str) and value.lstrip().startswith(("{", "[")):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise OfflineKDError(f"{where}: not a YAML mapping ({' '.join(str(exc).split())[:200]})") from None
    if isinstance(value, list) or isinstance(value, dict) and "ensemble" in value:
        return _parse_ensemble(value, where)
    SOURCES = tuple(_SOURCES)        # the registered sources' keys
    if isinstance(value, str):
        if not value:
            raise OfflineKDError(f"{where} is empty: give a checkpoint path or {{entry_point: module:function}}")
        return value
    if not isinstance(value, dict):
        raise OfflineKDError(f"{where} must be a checkpoint path or a mapping ({', '.join(SOURCES)}), got "
                             f"{type(value).__name__}")
    sources = [k for k in SOURCES if k in value]
    unknown = sorted(set(value) - set(SOURCES) - set(OPTIONS) - {"args"} - set(ENTRY_POINT_OPTIONS))
    if unknown or len(sources) != 1:
        raise OfflineKDError(f"{where}: a teacher mapping names one of {', '.join(SOURCES)}"
                             f"{' (got ' + ', '.join(sources) + ')' if len(sources) > 1 else ''}, with args, "
                             f"{' and '.join(ENTRY_POINT_OPTIONS)} for an entry point and the options "
                             f"{', '.join(OPTIONS)}"
                             f"{'; unknown: ' + ', '.join(unknown) if unknown else ''}")
    out = {k: value[k] for k in OPTIONS if value.get(k) is not None}
    if "vocabulary_map" in out and (not isinstance(out["vocabulary_map"], str) or not out["vocabulary_map"]):
        raise OfflineKDError(f"{where}.vocabulary_map must be a file path, got {out['vocabulary_map']!r}")
    if "max_length_mismatch" in out and (isinstance(out["max_length_mismatch"], bool)
                                         or not isinstance(out["max_length_mismatch"], int)
                                         or out["max_length_mismatch"] < 0):
        raise OfflineKDError(f"{where}.max_length_mismatch must be an integer >= 0, got {out['max_length_mismatch']!r}")
    if "hidden_pooling" in out and out["hidden_pooling"] not in ("mean", "stack"):
        raise OfflineKDError(f"{where}.hidden_pooling must be mean or stack, got {out['hidden_pooling']!r}")
    if "entry_point" in value:
        return _parse_entry_point(value, out, where)
    if "args" in value:
        raise OfflineKDError(f"{where}.args: only an entry_point takes args")
    wrong = [k for k in ENTRY_POINT_OPTIONS if k in value]
    if wrong:
        raise OfflineKDError(f"{where}.{wrong[0]}: only an entry_point takes it (a {sources[0]} teacher declares "
                             f"what it reads itself)")
    src = sources[0]
    if not isinstance(value[src], str) or not value[src]:
        raise OfflineKDError(f"{where}.{src} must be a path")
    if src == "checkpoint" and not out:
        return value[src]
    return {src: value[src], **out}


def _parse_entry_point(value: dict, out: dict, where: str) -> dict:
    ep, args = value["entry_point"], value.get("args") or {}
    if not isinstance(ep, str) or ep.count(":") != 1 or not all(ep.split(":")):
        raise OfflineKDError(f"{where}.entry_point must be 'module.path:function', got {ep!r}")
    if not isinstance(args, dict):
        raise OfflineKDError(f"{where}.args must be a mapping of keyword arguments, got {type(args).__name__}")
    kind, rate = value.get("input_kind"), value.get("sample_rate")
    if kind is not None and kind not in ("features", "waveform"):
        raise OfflineKDError(f"{where}.input_kind must be features or waveform, got {kind!r}")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0):
        raise OfflineKDError(f"{where}.sample_rate must be a positive integer (Hz), got {rate!r}")
    extra = {k: value[k] for k in ENTRY_POINT_OPTIONS if value.get(k) is not None}
    return {"entry_point": ep, "args": args, **extra, **out}


def _parse_ensemble(value, where: str) -> dict:
    members = value if isinstance(value, list) else value["ensemble"]
    extra = sorted(set(value) - {"ensemble", "weights"}) if isinstance(value, dict) else []
    if extra:
        raise OfflineKDError(f"{where}: an ensemble mapping takes ensemble (the list of teachers) and weights; "
                             f"unknown: {', '.join(extra)}")
    if not isinstance(members, list) or len(members) < 2:
        raise OfflineKDError(f"{where}: an ensemble lists at least two teachers, got {members!r}")
    if any(isinstance(m, list) or isinstance(m, dict) and "ensemble" in m for m in members):
        raise OfflineKDError(f"{where}: an ensemble's teachers are single teachers, not ensembles")
    weights = value.get("weights", "uniform") if isinstance(value, dict) else "uniform"
    return {"ensemble": [parse_teacher(m, f"{where}[{i}]") for i, m in enumerate(members)], "weights": weights}


def teacher_name(spec: TeacherSpec) -> str:
    if isinstance(spec, dict) and "ensemble" in spec:
        return f"ensemble of {len(spec['ensemble'])} teachers"
    if isinstance(spec, str):
        return spec
    if "entry_point" in spec:
        return f"entry point {spec['entry_point']}"
    return f"{'Hugging Face model' if 'huggingface' in spec else 'checkpoint'} {spec.get('huggingface') or spec.get('checkpoint')}"


def spec_sha256(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def load_teacher(spec: TeacherSpec, device, vocab: Optional[Vocabulary] = None, where: str = "dump.teacher",
                 subsampling: Optional[int] = None, corpus=None) -> LoadedTeacher:
    """The teacher `spec` names, on `device`, in eval mode, in the vocabulary `vocab` (the corpus's, or the
    cache's; None: a checkpoint's own) and on frames of `subsampling` feature frames (None: the teacher's own).
    `corpus` (the `Corpus` read) gives a waveform teacher the feature frames' shift in samples (its front-end
    record) and their dimension."""
    frontend = corpus.meta.get("frontend") if corpus is not None else None
    spec = parse_teacher(spec, where)
    if isinstance(spec, dict) and "ensemble" in spec:
        return _load_ensemble(spec, device, vocab, where, subsampling, corpus)
    opts = {} if isinstance(spec, str) else {k: spec[k] for k in OPTIONS if k in spec}
    kind = "checkpoint" if isinstance(spec, str) else next(k for k in _SOURCES if k in spec)
    src = _SOURCES[kind](spec, device, where)
    inner, record, dev, name = src.inner, src.record, src.dev, src.name
    tokens, blank, delimiter, special = src.tokens, src.blank, src.delimiter, src.special
    if src.own_vocab is not None and (vocab is None or vocab.tokens == src.own_vocab.tokens):
        vocab = src.own_vocab          # as before alignment existed: the cache records the checkpoint's vocabulary
    if vocab is None:
        raise OfflineKDError(f"{where}: a teacher from an {kind} needs the corpus's vocabulary to "
                             f"map its tokens onto")
    vmap = VocabularyMap(tokens, blank, vocab, delimiter, special, opts.get("vocabulary_map"), where,
                         str(Path(corpus.dir) / "vocab.txt") if corpus is not None else None)
    frames, unit, own = _frames(inner, subsampling, frontend, opts, where)
    if vmap.identity and frames.identity and not reads_waveform(inner):
        return LoadedTeacher(inner, vocab, record, dev, name)
    alignment = {"vocabulary": vmap.record(tokens), "frames": frames.record(unit)}
    if opts.get("vocabulary_map"):
        alignment["vocabulary"]["mapping_file_sha256"] = file_sha256(opts["vocabulary_map"])
    describe = {"inner": inner.describe(), "inner_type": getattr(inner, "model_type", "?"), "alignment": alignment}
    model = AlignedTeacher(inner, vmap, frames, subsampling or own, describe,
                           getattr(inner, "input_dim", None) or (corpus.feature_dim if corpus is not None else 0))
    return LoadedTeacher(model, vocab, {**record, "alignment": alignment}, dev, name)


def _load_ensemble(spec: dict, device, vocab, where: str, subsampling, corpus) -> LoadedTeacher:
    """Every member loaded as a single teacher onto the first's vocabulary and frame rate (or the student's, where
    given), combined by `EnsembleTeacher`."""
    members = []
    for i, m in enumerate(spec["ensemble"]):
        t = load_teacher(m, device, vocab, f"{where}[{i}]", subsampling, corpus)
        if not members:
            vocab, subsampling = t.vocab, subsampling or int(t.model.subsampling)
        members.append(t)
    weights = resolve_weights(spec["weights"], members)
    model = EnsembleTeacher([t.model for t in members], weights, where,
                            corpus.feature_dim if corpus is not None else None).to(device).eval()
    return LoadedTeacher(model, vocab, ensemble_record(members, weights, spec["weights"]), None,
                         f"ensemble of {len(members)} teachers", tuple(members))


def _frames(inner, subsampling: Optional[int], frontend: Optional[dict], opts: dict, where: str):
    """-> (FrameAlignment, unit of its shifts, the teacher's own subsampling in feature frames)."""
    kw = {"hidden": opts.get("hidden_pooling", "mean"), "max_length_mismatch": opts.get("max_length_mismatch", 2),
          "where": where}
    if subsampling is not None and (not isinstance(subsampling, int) or subsampling < 1):
        raise OfflineKDError(f"the student's subsampling must be an integer >= 1, got {subsampling!r}")
    if not reads_waveform(inner):
        own = int(inner.subsampling)
        return FrameAlignment(Fraction(own), Fraction(subsampling or own), **kw), "feature frames", own
    if not frontend or "sample_rate" not in frontend or "frame_shift_ms" not in frontend:
        raise OfflineKDError(f"{where}: this teacher reads waveforms, and the corpus records no front end; import "
                             f"the corpus from audio with `data import --keep-audio`")
    if int(frontend["sample_rate"]) != inner.sample_rate:
        raise OfflineKDError(f"{where}: the teacher reads {inner.sample_rate} Hz audio and the corpus keeps "
                             f"{frontend['sample_rate']} Hz; import the audio again at the teacher's rate "
                             f"(`data import ... --keep-audio --sample-rate {inner.sample_rate}`)")
    shift = Fraction(int(frontend["sample_rate"])) * Fraction(str(frontend["frame_shift_ms"])) / 1000
    own = Fraction(inner.frame_shift_samples) / shift
    if subsampling is None:
        if own.denominator != 1:
            raise OfflineKDError(f"{where}: the teacher's frame shift ({inner.frame_shift_samples} samples) is "
                                 f"{float(own):g} feature frames; give the student's subsampling (dump.subsampling)")
        subsampling = int(own)
    return FrameAlignment(Fraction(inner.frame_shift_samples), shift * subsampling, **kw), "samples", \
        int(own) if own.denominator == 1 else subsampling


def check_frames(teacher: LoadedTeacher, reader, indices) -> None:
    """A waveform teacher's frame count for every utterance, from its sample count, against the student's: an
    utterance the length rule cannot reconcile is named before anything is written (each member of an ensemble)."""
    for member in teacher.members:
        check_frames(member, reader, indices)
    model = teacher.model
    if not reads_waveform(model) or getattr(getattr(model, "inner", None), "output_lengths", None) is None:
        return
    if not reader.has_audio:
        reader.audio(0)            # the one-line error: the split keeps no audio
    idx = np.asarray(indices, dtype=np.int64)
    samples = torch.from_numpy(np.diff(reader.audio_offsets)[idx])
    native = model.inner.output_lengths(samples)
    target = torch.from_numpy(-(-reader.lengths[idx] // model.subsampling))
    try:
        model.frames.check(model.frames.lengths(native), target)
    except LengthMismatch as exc:
        raise OfflineKDError(f"{reader.path.name}: utterance {reader.utterance_ids[int(idx[exc.b])]}: {exc}") from None


@torch.no_grad()
def probe(teacher: LoadedTeacher, reader, index: int, layers: list[int], device) -> None:
    """One forward on one utterance before anything is written: a teacher from an entry point that returns the
    wrong shapes, lengths or non-finite values fails here (its wrapper checks every forward), not in a cache."""
    if not isinstance(teacher.model, (EntryPointTeacher, AlignedTeacher, EnsembleTeacher)):
        return
    try:
        forward_batch(teacher.model, utterance_batch(reader, index, teacher.input_kind == "waveform"), device, layers)
    except TeacherForwardError as exc:
        raise TeacherForwardError(f"{exc} on utterance {reader.utterance_ids[index]}") from None
