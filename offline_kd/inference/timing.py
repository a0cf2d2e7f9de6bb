"""Word start and end times from a CTC output: the frames of each emitted token's spike (greedy), grouped into words.

A token's run is the stretch of frames on which the best path holds it (repeats collapsed); a word starts at the
first frame of its first token's run and ends after the last frame of its last token's run. Times are frames x
the output frame's duration (the front end's frame shift x the model's subsampling).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from offline_kd.data.vocab import Vocabulary


@dataclass(frozen=True)
class Word:
    """One recognised word and where it lies in the audio (seconds)."""
    word: str
    start: float
    end: float

    def to_dict(self) -> dict:
        return {"word": self.word, "start": round(self.start, 3), "end": round(self.end, 3)}


def token_runs(best_path: np.ndarray, blank: int = 0) -> list[tuple[int, int, int]]:
    """(token, first frame, end frame) of every non-blank run of a best path (T,)."""
    runs, prev = [], blank
    for t, k in enumerate(np.asarray(best_path).tolist()):
        if k != blank and k == prev:
            runs[-1][2] = t + 1
        elif k != blank:
            runs.append([k, t, t + 1])
        prev = k
    return [tuple(r) for r in runs]


def greedy_words(best_path: np.ndarray, vocab: Vocabulary, frame_seconds: float) -> list[Word]:
    """The words of a greedy best path (T,) with their times; their text is `vocab.decode` of the path's tokens."""
    words: list[Word] = []
    current, start, end = [], 0, 0
    for token, first, last in token_runs(best_path) + [(None, 0, 0)]:
        boundary = token is None or vocab.starts_word(token)
        if boundary and current:
            words.append(Word(vocab.decode(current), start * frame_seconds, end * frame_seconds))
            current = []
        if token is None or (vocab.tokenizer == "char" and vocab.tokens[token] == vocab.word_separator):
            continue
        if not current:
            start = first
        current.append(token)
        end = last
        if vocab.tokenizer == "word":
            words.append(Word(vocab.decode(current), start * frame_seconds, end * frame_seconds))
            current = []
    return words
