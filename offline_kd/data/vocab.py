"""Vocabulary and tokenizer.

A vocabulary file has one token per line; line 0 is the CTC blank (`<blank>`). Two tokenizer modes:
`char` (one token per character, a word-separator token such as `|` between words) and `word` (space-separated
units, each one token). WER is always computed on words, CER on characters of the word string.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from offline_kd.errors import OfflineKDError

BLANK = "<blank>"


@dataclass(frozen=True)
class Vocabulary:
    tokens: tuple[str, ...]
    tokenizer: str = "word"              # char | word
    word_separator: str | None = None    # char mode only

    def __post_init__(self):
        if self.tokenizer not in ("char", "word"):
            raise OfflineKDError(f"tokenizer must be 'char' or 'word', got {self.tokenizer!r}")
        if not self.tokens or self.tokens[0] != BLANK:
            raise OfflineKDError(f"vocabulary: token 0 must be the CTC blank '{BLANK}'")
        if len(set(self.tokens)) != len(self.tokens):
            raise OfflineKDError("vocabulary: duplicate tokens")
        if self.tokenizer == "char":
            if self.word_separator is None or self.word_separator not in self.tokens:
                raise OfflineKDError("vocabulary: char tokenizer needs a word_separator token present in the vocabulary")
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.tokens)})

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def sha256(self) -> str:
        h = hashlib.sha256()
        h.update(f"{self.tokenizer}\n{self.word_separator}\n".encode())
        h.update("\n".join(self.tokens).encode())
        return h.hexdigest()

    def units(self, transcript: str) -> list[str]:
        """Transcript (words separated by spaces) -> token strings."""
        words = transcript.split()
        if self.tokenizer == "word":
            return words
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
        text = "".join(" " if t == self.word_separator else t for t in toks)
        return " ".join(text.split())

    # ------------------------------------------------------------------ files
    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        (d / "vocab.txt").write_text("\n".join(self.tokens) + "\n")

    def to_dict(self) -> dict:
        return {"tokens": list(self.tokens), "tokenizer": self.tokenizer, "word_separator": self.word_separator}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocabulary":
        return cls(tuple(d["tokens"]), d["tokenizer"], d.get("word_separator"))

    @classmethod
    def load(cls, path: str | Path, tokenizer: str, word_separator: str | None) -> "Vocabulary":
        p = Path(path)
        if not p.is_file():
            raise OfflineKDError(f"vocabulary file not found: {p}")
        tokens = [line.rstrip("\n") for line in p.read_text().splitlines()]
        tokens = [t for t in tokens if t != ""]
        return cls(tuple(tokens), tokenizer, word_separator)
