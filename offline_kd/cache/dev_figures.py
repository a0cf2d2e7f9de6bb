"""The cached teacher's dev figures, measured on the cache itself: the greedy WER / CER of the 1-best the cache
stores (`best_path`) for a transcribed split, against the corpus's transcripts.

A checkpoint records its own dev figures (`teacher.dev`, what `train-student` compares the baseline with), but a
teacher from an entry point, a Hugging Face directory or an ensemble of several has none, and an ensemble's figures
are not its members': the frame-wise mean of several CTC models' posteriors can decode worse than any of them
where their spikes fall on different frames (docs/teachers.md). So the dump measures the cached 1-best of its
`dev` split, when it caches one with transcripts, before the seal, and stores it as `teacher.cached_dev`
({wer, cer, split, corpus, utterances}); `CacheMeta.teacher_dev` falls back to it where the checkpoint recorded
none, and `cache info` prints both.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from offline_kd.cache.layout import decode_ids
from offline_kd.data.targets import collapse_best_path
from offline_kd.decoding.metrics import error_rates

SPLIT = "dev"       # the split measured (the data.dev_split every shipped config uses)


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
