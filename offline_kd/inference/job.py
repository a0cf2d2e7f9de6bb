"""A transcription job (`offline-kd transcribe`): many inputs, worker processes for audio decoding and the front end,
progress with audio hours and ETA, results in input order, the real-time factor and where the time went.

Features are computed in `jobs` spawned worker processes (a batch each, a few batches ahead of the model) or, with
one job, in this process. The output file is written whole under a temporary name and renamed at the end: a failed
or interrupted job leaves no half-written output.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
from tqdm import tqdm

from offline_kd.data.audio import AudioError
from offline_kd.data.corpus import SplitReader
from offline_kd.data.frontend import FrontEnd
from offline_kd.decoding.beam import BeamSearchDecoder
from offline_kd.decoding.metrics import error_rates
from offline_kd.errors import OfflineKDError
from offline_kd.inference.audio_input import Utterance
from offline_kd.inference.model import (BATCH_SECONDS, BATCH_UTTERANCES, Failed, SpeechModel, Transcript,
                                        batches_of, utterance_features)
from offline_kd.models.interface import reads_waveform


@dataclass
class JobResult:
    """What a transcription job did."""
    transcripts: list[Transcript]
    failed: list[Failed]
    audio_seconds: float
    wall_seconds: float
    seconds: dict = field(default_factory=dict)        # {"features", "model", "search"}: time in each stage
    wer: Optional[dict] = None                         # {"wer", "cer", "num_utterances"} where references exist

    @property
    def real_time_factor(self) -> float:
        return self.wall_seconds / max(self.audio_seconds, 1e-9)

    def summary(self) -> dict:
        out = {"utterances": len(self.transcripts), "failed": len(self.failed),
               "audio_hours": round(self.audio_seconds / 3600, 4), "wall_seconds": round(self.wall_seconds, 3),
               "real_time_factor": round(self.real_time_factor, 5),
               "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}
        if self.wer is not None:
            out.update({"wer": round(self.wer["wer"], 3), "cer": round(self.wer["cer"], 3)})
        return out


def features_of(record: dict, utterances: list[Utterance], waveform: bool = False) -> list:
    """Per utterance its features (with `waveform` its samples), or the AudioError that stopped them (runs in a
    worker process)."""
    fe = FrontEnd(record)
    out = []
    for u in utterances:
        try:
            out.append(utterance_features(fe, u, waveform))
        except AudioError as exc:
            out.append(AudioError(str(exc)))
    return out


def _pooled_features(model: SpeechModel, utterances: Sequence[Utterance], plan: list[list[int]],
                     jobs: int) -> Iterator[list]:
    """Each batch's features from `jobs` spawned workers, up to 2 x jobs batches ahead, in plan order."""
    record, waveform = model.require_frontend().record, reads_waveform(model.model)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        pending = []
        queue = iter(plan)
        for idx in queue:
            pending.append(pool.submit(features_of, record, [utterances[i] for i in idx], waveform))
            if len(pending) >= 2 * jobs:
                break
        while pending:
            fut = pending.pop(0)
            nxt = next(queue, None)
            if nxt is not None:
                pending.append(pool.submit(features_of, record, [utterances[i] for i in nxt], waveform))
            yield fut.result()


def corpus_utterances(reader: SplitReader, frame_seconds: float) -> list[Utterance]:
    """A corpus split's utterances (features, not audio): durations from their frame counts."""
    return [Utterance(uid, duration=float(n) * frame_seconds, reference=text or None, where=f"{reader.path.name}")
            for uid, n, text in zip(reader.utterance_ids, reader.lengths.tolist(),
                                    reader.transcripts if reader.transcribed else [""] * len(reader))]


def _feature_batches(model: SpeechModel, utterances, plan, reader, jobs: int):
    """The features of each planned batch: read from a corpus split, computed by `jobs` worker processes, or here."""
    if reader is not None and reads_waveform(model.model):      # its kept audio (data import --keep-audio)
        return ([reader.audio(i).astype(np.float32) / 32768.0 for i in idx] for idx in plan)
    if reader is not None:
        return ([reader.features(i) for i in idx] for idx in plan)
    if jobs > 1:
        return _pooled_features(model, utterances, plan, jobs)
    model.require_frontend()
    return (model.batch_features(utterances, idx) for idx in plan)


def _timed(batches, seconds: dict):
    """`batches`, adding the time spent waiting for each to seconds["features"] (all of it with one job)."""
    it = iter(batches)
    while True:
        t = time.perf_counter()
        try:
            b = next(it)
        except StopIteration:
            return
        seconds["features"] += time.perf_counter() - t
        yield b


def _scored(utterances, results: dict, transcripts: list):
    """WER/CER against the references, when every transcribed utterance has one; else None."""
    refs = [(utterances[i].reference, results[i].text) for i in sorted(results) if utterances[i].reference]
    if not refs or len(refs) != len(transcripts):
        return None
    rates = error_rates([r for r, _ in refs], [h for _, h in refs])
    return {"wer": rates["wer"], "cer": rates["cer"], "num_utterances": len(refs)}


def run_job(model: SpeechModel, utterances: Sequence[Utterance], *, decoder: Optional[BeamSearchDecoder] = None,
            jobs: int = 1, skip_invalid: bool = False, progress: bool = True, reader: Optional[SplitReader] = None,
            batch_seconds: float = BATCH_SECONDS, batch_size: int = BATCH_UTTERANCES) -> JobResult:
    """Transcribe `utterances` (or, with `reader`, the features of that corpus split, whose utterances they are)."""
    if not utterances:
        raise OfflineKDError("nothing to transcribe: give audio files, a directory, --manifest or --corpus/--split")
    plan = batches_of(utterances, batch_seconds, batch_size)
    seconds = {"features": 0.0, "model": 0.0, "search": 0.0}
    start = time.perf_counter()
    total = sum(u.duration for u in utterances)
    feature_batches = _feature_batches(model, utterances, plan, reader, jobs)
    results: dict[int, Transcript] = {}
    failed: list[Failed] = []
    position = {id(u): i for i, u in enumerate(utterances)}
    bar = tqdm(total=round(total, 2), unit="s", unit_scale=False, desc="transcribe", disable=not progress,
               file=sys.stderr, dynamic_ncols=True, bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s of audio "
                                                               "[{elapsed}<{remaining}{postfix}]")
    done = 0.0
    with bar:
        runs = model.run(utterances, skip_invalid=skip_invalid, batch_seconds=batch_seconds, batch_size=batch_size,
                         feature_batches=_timed(feature_batches, seconds))
        while True:
            t = time.perf_counter()
            res = next(runs, None)
            if res is None:
                break
            seconds["model"] += time.perf_counter() - t
            failed += res.failed
            t = time.perf_counter()
            ok = [(u, lp) for u, lp in zip(res.utterances, res.log_probs) if lp is not None]
            for tr, (u, _) in zip(model.decode([lp for _, lp in ok], [u.uid for u, _ in ok], True, decoder), ok):
                results[position[id(u)]] = Transcript(tr.uid, tr.text, tr.words, u.duration or tr.duration)
            seconds["search"] += time.perf_counter() - t
            done += sum(u.duration for u in res.utterances)
            bar.update(round(sum(u.duration for u in res.utterances), 2))
            bar.set_postfix_str(f"{done / 3600:.3f} h")
    seconds["model"] -= seconds["features"]        # run() pulls the features inside the model's time
    transcripts = [results[i] for i in sorted(results)]
    return JobResult(transcripts, failed, sum(t.duration for t in transcripts), time.perf_counter() - start,
                     seconds, _scored(utterances, results, transcripts))


def write_output(result: JobResult, out: Optional[str], fmt: str, echo) -> None:
    """JSON lines ({id, text, words}) or plain text (id TAB text) to `out` (atomically) or through `echo`."""
    lines = [json.dumps(t.to_dict(), ensure_ascii=False) if fmt == "jsonl" else f"{t.uid}\t{t.text}"
             for t in result.transcripts]
    if out is None:
        for line in lines:
            echo(line)
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, path)


def failed_report(failed: list[Failed]) -> list[str]:
    return [f"skipped {f.uid} ({f.where}): {f.reason}" for f in failed]
