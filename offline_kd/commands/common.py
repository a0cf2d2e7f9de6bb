"""Glue shared by the commands: open a corpus split for a model, validated."""

from __future__ import annotations

import numpy as np

from offline_kd.config import DataConfig, ModelConfig
from offline_kd.data.corpus import Corpus, SplitReader
from offline_kd.data.validate import validate_split
from offline_kd.errors import OfflineKDError


def check_vocab_matches_model(corpus: Corpus, model: ModelConfig) -> None:
    if len(corpus.vocab) != model.num_classes:
        raise OfflineKDError(f"model.num_classes is {model.num_classes} but the vocabulary of {corpus.dir} has "
                             f"{len(corpus.vocab)} tokens (blank included)")


def open_split(corpus: Corpus, split: str, model: ModelConfig, skip_invalid: bool,
               log=print) -> tuple[SplitReader, np.ndarray]:
    reader = corpus.split(split)
    valid = validate_split(reader, corpus.vocab, model.input_dim, model.subsampling, skip_invalid, log=log)
    return reader, valid


def open_train_dev(data: DataConfig, model: ModelConfig, log=print):
    corpus = Corpus(data.corpus)
    check_vocab_matches_model(corpus, model)
    train = open_split(corpus, data.train_split, model, data.skip_invalid, log)
    train[0].require_transcripts(f"data.train_split '{data.train_split}'")
    dev = open_split(corpus, data.dev_split, model, data.skip_invalid, log) if data.dev_split else (None, None)
    if dev[0] is not None:
        dev[0].require_transcripts(f"data.dev_split '{data.dev_split}'")
    return corpus, train, dev


def quiet(*_) -> None:
    """A `log` that prints nothing (ranks other than 0 under torchrun)."""
