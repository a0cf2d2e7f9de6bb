"""Transcript normalisation at import (`data import --normalize lower|upper`), as NeMo's and Hugging Face's CTC
recipes prepare text: case folded, punctuation removed, whitespace collapsed.

Mixed-case, punctuated transcripts ("She found a small box, after lunch.") otherwise give the student a vocabulary
with both cases and `, .`, which a teacher trained on normalised text cannot reach (teachers/coverage.py). The rules
are recorded in corpus.json (`text_normalization`) so that what was done to the references is known wherever the
corpus's WER is quoted.

Rules, in order: Unicode NFKC; the case folded (lower, or upper for a teacher with upper-case letters such as
wav2vec2-base-960h); typographic apostrophes (’ ‘ ʼ `) become `'`, which is kept inside a word ("don't") and removed
elsewhere; every other punctuation character (Unicode category P*) becomes a space (so "well-known" is two words);
runs of whitespace become one space, trimmed.
"""

from __future__ import annotations

import re
import unicodedata

MODES = ("none", "lower", "upper")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})
_LONE_APOSTROPHE = re.compile(r"(?<!\w)'|'(?!\w)")


def rules(mode: str) -> dict | None:
    """What corpus.json records for `mode` (None for none)."""
    if mode == "none":
        return None
    return {"mode": mode, "case": mode, "unicode": "NFKC", "punctuation": "removed (Unicode P*), apostrophes kept "
            "inside words", "whitespace": "collapsed"}


def normalize(text: str, mode: str) -> str:
    if mode == "none":
        return text
    t = unicodedata.normalize("NFKC", text)
    t = t.lower() if mode == "lower" else t.upper()
    t = t.translate(_APOSTROPHES)
    t = "".join(" " if unicodedata.category(c).startswith("P") and c != "'" else c for c in t)
    t = _LONE_APOSTROPHE.sub(" ", t)
    return " ".join(t.split())
