"""Corpus validation: what would make CTC training or a cache silently wrong is found before any work starts."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from offline_kd.data.corpus import SplitReader
from offline_kd.data.vocab import Vocabulary
from offline_kd.errors import OfflineKDError


def ctc_min_frames(labels: list[int]) -> int:
    """Frames CTC needs to emit `labels`: one per label plus a blank between each pair of repeated labels."""
    repeats = sum(1 for a, b in zip(labels, labels[1:]) if a == b)
    return len(labels) + repeats


def output_frames(num_frames, subsampling: int):
    """Frames after subsampling by `subsampling` (a partial last group counts): the project's one definition, for
    an int, a numpy array or an integer torch tensor alike."""
    return (num_frames + subsampling - 1) // subsampling


def _problems(reader: SplitReader, i: int, vocab: Vocabulary, subsampling: int, nonfinite: bool, changed: bool,
              changed_audio: bool) -> list[tuple[str, str]]:
    """[(problem, utterance label)] of utterance i (empty: valid)."""
    utt = reader.utterance_ids[i]
    out = []
    if changed:
        out.append(("features differ from their stored feature_sha256 (changed after the corpus was written)", utt))
    if changed_audio:
        out.append(("kept audio differs from its stored audio_sha256 (changed after the corpus was written)", utt))
    if reader.lengths[i] == 0:
        out.append(("zero-length features", utt))
    if nonfinite:
        out.append(("NaN/Inf in features", utt))
    if not reader.transcribed:   # teacher targets only: nothing to check against the model's output length
        return out
    text = reader.transcripts[i]
    unknown = vocab.unknown_units(text)
    if unknown:
        out.append((f"tokens not in the vocabulary (e.g. {unknown[0]!r})", utt))
    elif not text.strip():
        out.append(("empty transcript", utt))
    elif reader.lengths[i] > 0:
        need = ctc_min_frames(vocab.encode(text))
        have = output_frames(int(reader.lengths[i]), subsampling)
        if need > have:
            out.append(("transcript longer than the model's output frames (CTC cannot align it)",
                        f"{utt} ({need} > {have})"))
    return out


def validate_split(reader: SplitReader, vocab: Vocabulary, feature_dim: int, subsampling: int,
                   skip_invalid: bool = False, log=print, check_hashes: bool = False,
                   dim_key: str = "model.input_dim") -> np.ndarray:
    """Return the indices of valid utterances.

    Checks: feature dimension, zero-length utterances, NaN/Inf features, tokens not in the vocabulary, transcripts
    longer than the model's output frames (the transcript checks only in transcribed splits); with `check_hashes`
    (`data validate`) also every utterance's features (and kept audio) against their stored sha256, reading them
    all. With
    `skip_invalid=False` any problem raises one error listing the offending utterance ids per problem; with
    `skip_invalid=True` they are skipped and counted.
    """
    name = reader.path.name
    if reader.feature_dim != feature_dim:
        raise OfflineKDError(f"{name}: feature dim is {reader.feature_dim}, the model expects {feature_dim} "
                             f"({dim_key})")
    problems: dict[str, list[str]] = defaultdict(list)
    nonfinite = reader.nonfinite
    if nonfinite is None:   # a file written by hand without the per-utterance count: scan it
        nonfinite = np.array([int((~np.isfinite(reader.features(i))).sum()) for i in range(len(reader))])
    changed = set(reader.changed_features()) if check_hashes else set()
    changed_audio = set(reader.changed_audio()) if check_hashes and getattr(reader, "has_audio", False) else set()
    valid = []
    for i, utt in enumerate(reader.utterance_ids):
        found = _problems(reader, i, vocab, subsampling, nonfinite[i] > 0, i in changed, i in changed_audio)
        for what, label in found:
            problems[what].append(label)
        if not found:
            valid.append(i)
    if problems:
        n_bad = len(reader) - len(valid)
        parts = [f"{what}: {', '.join(ids[:8])}{' ...' if len(ids) > 8 else ''} ({len(ids)})"
                 for what, ids in problems.items()]
        if not skip_invalid:
            raise OfflineKDError(f"{name}: {n_bad} invalid utterance(s): " + "; ".join(parts)
                                 + " (data.skip_invalid, --skip-invalid on the command line, skips them)")
        log(f"{name}: skipping {n_bad} invalid utterance(s): " + "; ".join(parts))
    if not valid:
        raise OfflineKDError(f"{name}: no valid utterances")
    return np.asarray(valid, dtype=np.int64)
