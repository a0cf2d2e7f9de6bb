"""Vocabulary and tokenizer.

A vocabulary file has one token per line; line 0 is the CTC blank (`<blank>`). Three tokenizer modes:
`char` (one token per character, a word-separator token such as `|` between words), `word` (space-separated
units, each one token) and `bpe` (sentencepiece sub-words, the format NeMo and icefall ship: a piece that starts a
word begins with `▁`). WER is always computed on words, CER on characters of the word string.

A `bpe` vocabulary carries its sentencepiece model (the serialized proto, `bpe.model` beside `vocab.txt`; base64 in
`to_dict`, so caches and checkpoints hold it too): its tokens are `<blank>` then the model's pieces in id order (a
piece named `<blk>` or `<blank>`, icefall's blank, is the blank itself), so the student's class of piece i is i + 1
(or i where the model has its own blank at 0). Encoding needs the `sentencepiece` package (`pip install
'offline-kd[bpe]'`); decoding only the pieces.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path

from offline_kd.errors import OfflineKDError

BLANK = "<blank>"
WORD_START = "\u2581"                  # sentencepiece's word-start mark
BPE_MODEL_FILE = "bpe.model"
_BLANK_PIECES = ("<blk>", BLANK)
TOKENIZERS = ("char", "word", "bpe")


def sentencepiece():
    try:
        import sentencepiece as spm
    except ImportError:
        raise OfflineKDError("a bpe vocabulary needs the sentencepiece package: pip install 'offline-kd[bpe]'") \
            from None
    return spm


def bpe_tokens(model: bytes, where: str = "bpe model") -> tuple[str, ...]:
    """The vocabulary's tokens for a sentencepiece model: the blank, then its pieces in id order."""
    try:
        sp = sentencepiece().SentencePieceProcessor(model_proto=model)
    except (RuntimeError, TypeError) as exc:
        raise OfflineKDError(f"{where}: not a sentencepiece model ({str(exc).splitlines()[0][:200]})") from None
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    if pieces and pieces[0] in _BLANK_PIECES:
        pieces = pieces[1:]
    return (BLANK, *pieces)


@dataclass(frozen=True)
class Vocabulary:
    tokens: tuple[str, ...]
    tokenizer: str = "word"              # char | word | bpe
    word_separator: str | None = None    # char mode only
    bpe_model: bytes | None = None       # bpe mode only: the sentencepiece model (serialized proto)

    def __post_init__(self):
        if self.tokenizer not in TOKENIZERS:
            raise OfflineKDError(f"tokenizer must be one of {', '.join(TOKENIZERS)}, got {self.tokenizer!r}")
        if not self.tokens or self.tokens[0] != BLANK:
            raise OfflineKDError(f"vocabulary: token 0 must be the CTC blank '{BLANK}'")
        if len(set(self.tokens)) != len(self.tokens):
            raise OfflineKDError("vocabulary: duplicate tokens")
        if self.tokenizer == "char":
            if self.word_separator is None or self.word_separator not in self.tokens:
                raise OfflineKDError("vocabulary: char tokenizer needs a word_separator token present in the vocabulary")
        if (self.tokenizer == "bpe") != (self.bpe_model is not None):
            raise OfflineKDError("vocabulary: a bpe tokenizer needs its sentencepiece model (bpe.model beside "
                                 "vocab.txt), and only a bpe tokenizer has one")
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.tokens)})
        object.__setattr__(self, "_sp", None)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def sha256(self) -> str:
        h = hashlib.sha256()
        h.update(f"{self.tokenizer}\n{self.word_separator}\n".encode())
        h.update("\n".join(self.tokens).encode())
        if self.bpe_model is not None:
            h.update(b"\nbpe:" + hashlib.sha256(self.bpe_model).hexdigest().encode())
        return h.hexdigest()

    def __getstate__(self):                 # the sentencepiece processor is rebuilt where it is needed
        return {k: v for k, v in self.__dict__.items() if k != "_sp"}

    def __setstate__(self, state):
        self.__dict__.update(state, _sp=None)

    def _processor(self):
        if self._sp is None:
            object.__setattr__(self, "_sp", sentencepiece().SentencePieceProcessor(model_proto=self.bpe_model))
        return self._sp

    def starts_word(self, token: int) -> bool:
        """Whether a token begins a new word (the word separator itself in char mode)."""
        t = self.tokens[token]
        if self.tokenizer == "word":
            return True
        if self.tokenizer == "bpe":
            return t.startswith(WORD_START)
        return t == self.word_separator

    def units(self, transcript: str) -> list[str]:
        """Transcript (words separated by spaces) -> token strings."""
        words = transcript.split()
        if self.tokenizer == "word":
            return words
        if self.tokenizer == "bpe":
            return list(self._processor().encode(" ".join(words), out_type=str)) if words else []
        out: list[str] = []
        for i, w in enumerate(words):
            if i:
                out.append(self.word_separator)
            out.extend(w)
        return out

    def encode(self, transcript: str) -> list[int]:
        """Token ids; raises KeyError(token) for an out-of-vocabulary unit."""
        return [self._index[u] for u in self.units(transcript)]

    def unknown_units(self, transcript: str) -> list[str]:
        return [u for u in self.units(transcript) if u not in self._index]

    def decode(self, ids) -> str:
        """Token ids (no blanks) -> word string."""
        toks = [self.tokens[i] for i in ids if i != 0]
        if self.tokenizer == "word":
            return " ".join(toks)
        if self.tokenizer == "bpe":
            return " ".join("".join(toks).replace(WORD_START, " ").split())
        text = "".join(" " if t == self.word_separator else t for t in toks)
        return " ".join(text.split())

    # ------------------------------------------------------------------ files
    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        (d / "vocab.txt").write_text("\n".join(self.tokens) + "\n")
        if self.bpe_model is not None:
            (d / BPE_MODEL_FILE).write_bytes(self.bpe_model)

    def to_dict(self) -> dict:
        d = {"tokens": list(self.tokens), "tokenizer": self.tokenizer, "word_separator": self.word_separator}
        if self.bpe_model is not None:
            d["bpe_model"] = base64.b64encode(self.bpe_model).decode("ascii")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Vocabulary":
        model = d.get("bpe_model")
        return cls(tuple(d["tokens"]), d["tokenizer"], d.get("word_separator"),
                   base64.b64decode(model) if model is not None else None)

    @classmethod
    def from_bpe_model(cls, model: bytes, where: str = "bpe model") -> "Vocabulary":
        return cls(bpe_tokens(model, where), "bpe", None, bytes(model))

    @classmethod
    def load(cls, path: str | Path, tokenizer: str, word_separator: str | None) -> "Vocabulary":
        p = Path(path)
        if not p.is_file():
            raise OfflineKDError(f"vocabulary file not found: {p}")
        tokens = [line.rstrip("\n") for line in p.read_text().splitlines()]
        tokens = [t for t in tokens if t != ""]
        model = None
        if tokenizer == "bpe":
            mp = p.parent / BPE_MODEL_FILE
            if not mp.is_file():
                raise OfflineKDError(f"{p}: a bpe vocabulary needs its sentencepiece model {mp}, which is missing")
            model = mp.read_bytes()
            if bpe_tokens(model, str(mp)) != tuple(tokens):
                raise OfflineKDError(f"{p} does not list the pieces of {mp} (the blank, then the model's pieces in "
                                     f"id order)")
        return cls(tuple(tokens), tokenizer, word_separator, model)
