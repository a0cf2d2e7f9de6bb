"""The cached teacher's dev figures, measured on the cache itself: the greedy WER / CER of the 1-best the cache
stores (`best_path`) for a transcribed split, against the corpus's transcripts.

A checkpoint records its own dev figures (`teacher.dev`, what `train-student` compares the baseline with), but a
teacher from an entry point, a Hugging Face directory or an ensemble of several has none, and an ensemble's figures
are not its members': the frame-wise mean of several CTC models' posteriors can decode worse than any of them
where their spikes fall on different frames (docs/teachers.md). So the dump measures the cached 1-best of its
`dev` split, when it caches one with transcripts, before the seal, and stores it as `teacher.cached_dev`
({wer, cer, split, corpus, utterances}); `CacheMeta.teacher_dev` falls back to it where the checkpoint recorded
none, and `cache info` prints both.

The dump also says when the figure shows that the cache holds less than its teacher knows (`warnings`): an ensemble
decoding worse than its best member, or any teacher whose cached 1-best is clearly worse than the dev WER its
checkpoint recorded (a student frame rate too coarse for the tokens, a wrong vocabulary map).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from offline_kd.cache.layout import decode_ids
from offline_kd.data.targets import collapse_best_path
from offline_kd.decoding.metrics import error_rates

SPLIT = "dev"       # the split measured (the data.dev_split every shipped config uses)
# the cached 1-best may be this much worse than the teacher's recorded dev WER before the dump warns: points, and a
# share of that WER (at the teacher's own frame rate the two are the same figure; a coarser student rate costs some)
MARGIN_POINTS, MARGIN_SHARE = 2.0, 0.25


def greedy_figures(group, vocab, transcripts: dict) -> Optional[dict]:
    """{wer, cer, utterances} of a written split's stored 1-best against `transcripts` ({utterance id: text});
    None when no cached utterance has a transcript."""
    ids = decode_ids(group["utterance_id"][...])
    offsets = group["offset"][:].astype(np.int64)
    best = np.asarray(group["best_path"][:])
    refs, hyps = [], []
    for i, u in enumerate(ids):
        text = transcripts.get(u, "")
        if text.strip():
            refs.append(text)
            hyps.append(vocab.decode(collapse_best_path(best[offsets[i]:offsets[i + 1]]).tolist()))
    if not refs:
        return None
    r = error_rates(refs, hyps)
    return {"wer": r["wer"], "cer": r["cer"], "utterances": len(refs)}


def warnings(teacher: dict, got: dict, ensemble: bool) -> list[str]:
    """What the dump says about the cached dev 1-best's figures `got` ({wer, ...}), given the cache's teacher
    metadata (its recorded `dev`, or its `members`' for an ensemble)."""
    members = [(i, float(m["dev"]["wer"])) for i, m in enumerate(teacher.get("members") or [], start=1)
               if (m.get("dev") or {}).get("wer") is not None]
    if ensemble:
        if not members:
            return []
        k, best = min(members, key=lambda x: x[1])
        return [] if got["wer"] <= best else [
            f"warning: the ensemble's greedy dev WER {got['wer']:.2f}% is above its best member's {best:.2f}% "
            f"(teacher {k}): where the members' CTC spikes fall on different frames, the mean of their posteriors "
            f"blurs them (docs/teachers.md, 'Several teachers'); weights: dev_wer, or teacher {k} alone, may teach "
            f"the student better"]
    own = (teacher.get("dev") or {}).get("wer")
    if own is None or got["wer"] <= float(own) + max(MARGIN_POINTS, MARGIN_SHARE * float(own)):
        return []
    return [f"warning: the cached {SPLIT} 1-best decodes at {got['wer']:.2f}% greedy WER where the teacher's "
            f"checkpoint recorded {float(own):.2f}%: the cache holds less than the teacher knows. Check its frame "
            f"alignment and vocabulary map (`offline-kd cache info`): a student frame rate too coarse for the "
            f"tokens drops them (docs/teachers.md, 'Frame rate')"]
