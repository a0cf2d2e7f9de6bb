"""The teacher's own vocabulary as the student's (`data import --vocab-from-teacher DIR|CKPT`): then every teacher
class has a student class of the same name and the vocabulary alignment drops nothing.

  - an offline-kd checkpoint (.pt): its vocabulary as it is (char, word or bpe with its sentencepiece model);
  - a Hugging Face CTC directory (or a model id in the local Hugging Face cache): vocab.json's tokens in id order, the pad token (the CTC blank) first as
    `<blank>`, the special tokens (`<s>`, `</s>`, `<unk>`) left out. A character vocabulary (wav2vec2-base-960h:
    upper-case letters, `'`, the word delimiter `|`) becomes a char vocabulary with the delimiter as the word
    separator; a sub-word one (pieces starting with `▁`) needs the directory's sentencepiece model
    (`tokenizer.model`, `spiece.model`, `sentencepiece.bpe.model` or `bpe.model`) to encode transcripts, and becomes a
    bpe vocabulary whose tokens are the model's pieces.
"""

from __future__ import annotations

import json
from pathlib import Path

from offline_kd.data.vocab import BLANK, WORD_START, Vocabulary
from offline_kd.errors import OfflineKDError
from offline_kd.teachers.huggingface import hf_vocabulary, resolve_model_dir
from offline_kd.models.checkpoint import model_from_checkpoint

SP_MODEL_NAMES = ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "bpe.model")


def teacher_vocabulary(source: str, where: str = "--vocab-from-teacher") -> Vocabulary:
    p = Path(source)
    if p.is_file():
        return model_from_checkpoint(p)[1]
    return _huggingface(resolve_model_dir(source, where), where)


def _huggingface(d: Path, where: str) -> Vocabulary:
    try:
        config = json.loads((d / "config.json").read_text()) if (d / "config.json").is_file() else {}
    except (OSError, json.JSONDecodeError) as exc:
        raise OfflineKDError(f"{where}: cannot read {d / 'config.json'} ({exc})") from None
    tokens, blank, delimiter, special = hf_vocabulary(d, config, where)
    kept = [t for i, t in enumerate(tokens) if i != blank and t not in special]
    if any(t.startswith(WORD_START) for t in kept):
        model = next((d / n for n in SP_MODEL_NAMES if (d / n).is_file()), None)
        if model is None:
            raise OfflineKDError(f"{where}: {d} has a sub-word vocabulary (pieces starting with '{WORD_START}') but no "
                                 f"sentencepiece model to encode transcripts with (looked for "
                                 f"{', '.join(SP_MODEL_NAMES)}); pass it as --tokenizer bpe --bpe-model FILE")
        return Vocabulary.from_bpe_model(model.read_bytes(), f"{where} {model}")
    if delimiter not in kept:
        raise OfflineKDError(f"{where}: {d}/vocab.json has no word delimiter {delimiter!r}: a character vocabulary "
                             f"needs one to separate words")
    bad = [t for t in kept if len(t) != 1]
    if bad:
        raise OfflineKDError(f"{where}: {d}/vocab.json holds multi-character tokens ({', '.join(map(repr, bad[:5]))}) "
                             f"that are neither special tokens nor sentencepiece pieces")
    return Vocabulary((BLANK, *kept), "char", delimiter)
