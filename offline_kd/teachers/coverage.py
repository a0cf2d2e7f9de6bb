"""How much of the student a mapped teacher covers, checked before a dump writes anything.

Two ways a teacher mapped onto the student's vocabulary (teachers/alignment.py) teaches the wrong thing without an
error:

  - **Unreached classes that the transcripts use.** Mixed-case, punctuated transcripts give the student `a` and
    `A`, `,` and `.`; an upper-case teacher reaches `A` only, and the cache gives `a` probability 1e-30 (FLOOR),
    so the KL term pushes down what the CTC term pushes up. `unreached_in_transcripts` counts, for every student
    class no teacher class reaches, how often the dumped splits' transcripts use it; the dump refuses any such class
    unless `dump.allow_unreached` is set.
  - **Dropped probability mass.** A sub-word teacher whose pieces are mapped to null keeps only its blank and a few
    characters: what the student sees is renormalised over a sliver of the teacher's belief. `dropped_mass` runs
    the teacher on a sample of utterances (spread over the first split, before anything is written) and measures
    the share of its probability that falls on dropped classes, per frame; the dump refuses a mean above
    `dump.max_dropped_mass` (default 5%).

Both figures go into the cache's metadata (`teacher_coverage`), which `cache info` prints.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from offline_kd.data.dataset import utterance_batch
from offline_kd.errors import OfflineKDError
from offline_kd.models.interface import forward_batch
from offline_kd.models.numerics import exact_numerics
from offline_kd.teachers.alignment import AlignedTeacher

SAMPLE_UTTERANCES = 32


def unreached_in_transcripts(unreached: list[str], readers: dict, vocab) -> tuple[dict[str, int], int]:
    """-> ({student token no teacher class reaches: its count in the transcripts of `readers` ({split: reader})}
    for the tokens that occur (the blank never does), the transcripts' token count)."""
    if not unreached:
        return {}, 0
    counts: Counter = Counter()
    for reader in readers.values():
        for t in reader.transcripts if reader.transcribed else []:
            counts.update(vocab.units(t))
    return {tok: counts[tok] for tok in unreached if counts.get(tok)}, sum(counts.values())


def check_unreached(found: dict[str, int], total_units: int, corpus: str, allow: bool, log) -> None:
    if not found:
        return
    listed = ", ".join(f"{tok!r} ({n}x)" for tok, n in sorted(found.items(), key=lambda kv: -kv[1]))
    share = 100.0 * sum(found.values()) / max(total_units, 1)
    msg = (f"student classes that the transcripts of {corpus} use get no teacher probability: {listed}, "
           f"{share:.1f}% of the transcripts' tokens; the cache would give them probability 1e-30 and the KL term "
           f"would fight the CTC term. Import the transcripts with `data import --normalize lower` (or upper: the "
           f"teacher's case, punctuation removed), or map teacher tokens onto them in a vocabulary_map "
           f"(docs/teachers.md)")
    if not allow:
        raise OfflineKDError(f"dump.teacher: {msg}; dump.allow_unreached: true dumps anyway")
    log(f"WARNING: {msg} (dump.allow_unreached is set: dumping anyway)")


@torch.no_grad()
def dropped_mass(teacher, reader, indices, device) -> dict | None:
    """The teacher's probability on the classes its vocabulary map drops, per frame, over up to SAMPLE_UTTERANCES
    of `indices` (spread evenly): {mean, worst, worst_utterance, utterances}; None when nothing is dropped."""
    model = teacher.model
    if not isinstance(model, AlignedTeacher) or not model.vmap.dropped:
        return None
    idx = np.asarray(indices)
    pick = sorted(set(np.linspace(0, len(idx) - 1, num=min(SAMPLE_UTTERANCES, len(idx))).round().astype(int)))
    per_utt, frames, total = [], 0, 0.0
    for p in pick:
        i = int(idx[p])
        with exact_numerics(), model.measuring_dropped() as seen:
            forward_batch(model, utterance_batch(reader, i, teacher.input_kind == "waveform"), device, [])
        mass = seen[0]                           # (T',) for this one utterance
        per_utt.append((float(mass.mean()) if len(mass) else 0.0, reader.utterance_ids[i]))
        frames += len(mass)
        total += float(mass.sum())
    worst = max(per_utt)
    return {"mean": total / max(frames, 1), "worst": worst[0], "worst_utterance": worst[1],
            "utterances": len(per_utt)}


def check_dropped(report: dict | None, limit: float, log) -> None:
    if report is None:
        return
    text = (f"{100 * report['mean']:.1f}% of the teacher's probability falls on classes its vocabulary map drops "
            f"(mean over the frames of {report['utterances']} utterances; worst utterance "
            f"{report['worst_utterance']}: {100 * report['worst']:.1f}%)")
    if report["mean"] > limit:
        raise OfflineKDError(f"dump.teacher: {text}, above dump.max_dropped_mass ({100 * limit:g}%): the student "
                             f"would learn from a renormalised sliver of the teacher. Take the teacher's own "
                             f"vocabulary (import the corpus again with `data import --vocab-from-teacher TEACHER`, or "
                             f"--tokenizer bpe --bpe-model for its sentencepiece model) or map its tokens in a "
                             f"vocabulary_map; "
                             f"dump.max_dropped_mass: 1.0 dumps anyway")
    log(f"teacher coverage: {text}")
