"""Opening corpus splits for a model, validated: the training split(s), dev, and any named split."""

from __future__ import annotations

import numpy as np

from offline_kd.config import WAVEFORM_RATE, WAVEFORM_TYPES, DataConfig, ModelConfig
from offline_kd.data.corpus import ConcatSplitReader, Corpus, SplitReader
from offline_kd.data.validate import validate_split
from offline_kd.errors import OfflineKDError


def check_vocab_matches_model(corpus: Corpus, model: ModelConfig) -> None:
    if len(corpus.vocab) != model.num_classes:
        raise OfflineKDError(f"model.num_classes is {model.num_classes} but the vocabulary of {corpus.dir} has "
                             f"{len(corpus.vocab)} tokens (blank included): set model.num_classes={len(corpus.vocab)}")


def open_split(corpus: Corpus, split: str, model, skip_invalid: bool,
               log=print) -> tuple[SplitReader, np.ndarray]:
    """A split validated for `model` (a ModelConfig, or a CTCModel: what is read is its input_dim and
    subsampling)."""
    reader = corpus.split(split)
    _check_audio(reader, split, model)
    valid = validate_split(reader, corpus.vocab, model.input_dim, model.subsampling, skip_invalid, log=log,
                           dim_key=getattr(model, "input_dim_key", "model.input_dim"))
    return reader, valid


def _check_audio(reader: SplitReader, split: str, model) -> None:
    """A model that reads waveforms (a ModelConfig of such a type, or a model whose `input_kind` says so) needs
    the split's kept audio, at the rate it reads (where it names one)."""
    kind = getattr(model, "type", None)
    config_type = kind if isinstance(kind, str) else None
    if config_type not in WAVEFORM_TYPES and getattr(model, "input_kind", "features") != "waveform":
        return
    what = f"model.type {config_type}" if config_type else f"the model ({getattr(model, 'model_type', 'waveform')})"
    if not reader.has_audio:
        raise OfflineKDError(f"{reader.path}: {what} reads waveforms and split '{split}' keeps no audio; import the "
                             f"corpus with `data import --keep-audio`")
    rate = WAVEFORM_RATE if config_type else getattr(model, "sample_rate", None)
    if rate is not None and reader.audio_sample_rate != rate:
        raise OfflineKDError(f"{reader.path}: {what} reads {rate} Hz audio and split '{split}' keeps "
                             f"{reader.audio_sample_rate} Hz; import the audio again with `data import --keep-audio "
                             f"--sample-rate {rate}`")


def train_splits(data: DataConfig) -> list[str]:
    """`data.train_split` as a list: one split name, or several trained on as one."""
    return [data.train_split] if isinstance(data.train_split, str) else list(data.train_split)


def open_train_dev(data: DataConfig, model: ModelConfig, log=print):
    corpus = Corpus(data.corpus)
    check_vocab_matches_model(corpus, model)
    parts = []
    for name in train_splits(data):
        reader, valid = open_split(corpus, name, model, data.skip_invalid, log)
        reader.require_transcripts(f"data.train_split '{name}'")
        parts.append((reader, valid))
    if len(parts) == 1:
        train = parts[0]
    else:
        reader = ConcatSplitReader([r for r, _ in parts])
        train = (reader, np.concatenate([v + start for (_, v), start in zip(parts, reader.starts)]))
    dev = open_split(corpus, data.dev_split, model, data.skip_invalid, log) if data.dev_split else (None, None)
    if dev[0] is not None:
        dev[0].require_transcripts(f"data.dev_split '{data.dev_split}'")
    return corpus, train, dev


def quiet(*_) -> None:
    """A `log` that prints nothing (ranks other than 0 under torchrun)."""
