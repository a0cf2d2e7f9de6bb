"""Sub-word vocabularies at import: a sentencepiece model given (`--bpe-model`), or trained on the training split's
transcripts (`--bpe-vocab-size N`).

Training is NeMo's and icefall's recipe: byte-pair encoding, every character of the transcripts covered, no
`<s>`/`</s>` (CTC has no use for them), `<unk>` at id 0. Two things differ, both so that the corpus's text is what
the model sees: the normalisation rule is `identity` (the text was normalised by `--normalize`, which corpus.json
records; sentencepiece's default NFKC would change it once more, silently), and every character of every split's
transcripts is a required piece, so dev and test never hold a unit the vocabulary lacks (a char vocabulary built
from the transcripts covers them all the same way). One thread: the same transcripts give the same model, byte for
byte.
"""

from __future__ import annotations

import io
from pathlib import Path

from offline_kd.data.vocab import Vocabulary, sentencepiece
from offline_kd.errors import OfflineKDError


def train_bpe(train_texts: list[str], all_texts: list[str], vocab_size: int) -> bytes:
    """A sentencepiece BPE model (serialized) of `vocab_size` pieces learnt from `train_texts`."""
    spm = sentencepiece()
    chars = sorted({c for t in all_texts for c in t if not c.isspace()})
    if vocab_size < len(chars) + 2:
        raise OfflineKDError(f"--bpe-vocab-size {vocab_size} is smaller than the transcripts' {len(chars)} distinct "
                             f"characters plus <unk> and the word start: give at least {len(chars) + 2}")
    if not train_texts:
        raise OfflineKDError("--bpe-vocab-size: the 'train' split has no transcript to learn the pieces from; give "
                             "--bpe-model")
    out = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(train_texts), model_writer=out, vocab_size=int(vocab_size), model_type="bpe",
            character_coverage=1.0, normalization_rule_name="identity", required_chars="".join(chars),
            bos_id=-1, eos_id=-1, unk_id=0, num_threads=1, minloglevel=2)
    except RuntimeError as exc:
        msg = str(exc).splitlines()[0][:300]
        raise OfflineKDError(f"--bpe-vocab-size {vocab_size}: sentencepiece could not train ({msg})") from None
    return out.getvalue()


def choose_vocab(texts_by_split: dict[str, list[str]], vocab_path: str | None, tokenizer: str,
                 word_separator: str, bpe_model: str | None = None, bpe_vocab_size: int | None = None,
                 given_vocab: Vocabulary | None = None) -> Vocabulary | None:
    """The vocabulary the import options name, or None where it is built from the transcripts (char, word).
    `given_vocab` is what `--vocab-from-teacher` (teachers/vocabulary.py) or `--like` read."""
    if given_vocab is not None:
        if vocab_path or bpe_model or bpe_vocab_size:
            raise OfflineKDError("--vocab-from-teacher and --like take their vocabulary: leave out --vocab, "
                                 "--bpe-model and --bpe-vocab-size")
        return given_vocab
    if tokenizer != "bpe":
        if bpe_model or bpe_vocab_size:
            raise OfflineKDError("--bpe-model and --bpe-vocab-size go with --tokenizer bpe")
        sep = word_separator if tokenizer == "char" else None
        return Vocabulary.load(vocab_path, tokenizer, sep) if vocab_path else None
    if vocab_path:
        raise OfflineKDError("--tokenizer bpe: the vocabulary is the sentencepiece model's pieces; give --bpe-model "
                             "instead of --vocab")
    if bool(bpe_model) == bool(bpe_vocab_size):
        raise OfflineKDError("--tokenizer bpe needs one of --bpe-model FILE (a sentencepiece model, as NeMo and "
                             "icefall ship them) or --bpe-vocab-size N (learnt from the training transcripts)")
    if bpe_model:
        p = Path(bpe_model)
        if not p.is_file():
            raise OfflineKDError(f"--bpe-model: file not found: {p}")
        return Vocabulary.from_bpe_model(p.read_bytes(), f"--bpe-model {p}")
    all_texts = [t for ts in texts_by_split.values() for t in ts]
    return Vocabulary.from_bpe_model(train_bpe(texts_by_split.get("train", []), all_texts, bpe_vocab_size))
