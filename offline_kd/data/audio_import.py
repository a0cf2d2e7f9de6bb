"""`offline-kd data import` from audio: manifests -> decoded, resampled audio -> Kaldi fbank -> HDF5 corpus.

The job, resumable at every step:
  1. Read the manifests (`manifests.py`) and check what needs no audio: duplicate ids, units outside `--vocab`,
     missing files, splits mixing transcribed and untranscribed rows.
  2. Cut every split into chunks of `CHUNK_UTTERANCES` rows (manifest order) and compute each chunk in a worker
     process (`--jobs`): decode, mix down, resample, quantize to int16, fbank (and per-utterance CMVN). A chunk is
     one `.npz` file in the work directory `.OUT.importing` beside `--out`, written atomically: a killed import
     restarts with the chunks it has not stored, and one whose audio files changed (size or mtime) is redone.
  3. Assemble each split's HDF5 from its chunks in order (global CMVN from the `--cmvn-split` chunks' sums), write
     `corpus.json` and `vocab.txt`, and rename the whole into `--out`. Only then does `--out` exist.

Memory is bounded by one chunk per worker plus the writer's buffer, whatever the corpus size; the rows (ids,
paths, transcripts) are the only per-utterance state held. The work directory's `job.json` holds the job's
identity (rows, front end, options): a rerun with other manifests or options discards an unfinished job.

Bad rows: without `--skip-invalid` the first one stops the import with a one-line error naming the row, the
utterance and the file (the chunks already stored stay for the rerun); with it they are left out and listed in
`OUT/import_skipped.tsv` (id, split, manifest row, file, reason).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from offline_kd.data.audio import AudioError, load
from offline_kd.data.bpe import choose_vocab
from offline_kd.data.corpus import Corpus, SplitWriter, write_corpus_meta
from offline_kd.data.importer import build_vocab
from offline_kd.data.text import MODES as TEXT_MODES, normalize as normalize_text, rules as text_rules
from offline_kd.data.frontend import CMVN_KINDS, Fbank, FbankOptions, GlobalStats, apply_global, normalise_utterance
from offline_kd.data.manifests import AudioRow, check_rows, read_manifests
from offline_kd.data.vocab import Vocabulary
from offline_kd.errors import OfflineKDError
from offline_kd.locking import WriterLock

CHUNK_UTTERANCES = 64
CHUNK_SECONDS = 1800.0
JOB_VERSION = 1
SKIPPED_REPORT = "import_skipped.tsv"


@dataclass(frozen=True)
class AudioImportOptions:
    fbank: FbankOptions = field(default_factory=FbankOptions)
    cmvn: str = "none"
    cmvn_split: str = "train"
    keep_audio: bool = False
    resample: bool = True
    skip_invalid: bool = False
    jobs: int = 1
    progress: bool = True
    normalize: str = "none"          # transcripts: none | lower | upper (data/text.py)
    cmvn_stats: Optional[dict] = None  # global CMVN taken as it is from another corpus (`--like`): its cmvn record

    def check(self) -> None:
        self.fbank.check()
        if self.normalize not in TEXT_MODES:
            raise OfflineKDError(f"--normalize must be one of {', '.join(TEXT_MODES)}, got {self.normalize!r}")
        if self.cmvn not in CMVN_KINDS:
            raise OfflineKDError(f"--cmvn must be one of {', '.join(CMVN_KINDS)}, got {self.cmvn!r}")
        if self.jobs < 1:
            raise OfflineKDError(f"--jobs must be >= 1, got {self.jobs}")
        if self.fbank.dither:
            print("warning: --dither > 0 makes features random: a resumed import will not reproduce them",
                  file=sys.stderr)


def like_corpus(directory: str, options: AudioImportOptions) -> tuple[AudioImportOptions, Vocabulary]:
    """`data import --like CORPUS`: new audio imported as CORPUS was, so that a model trained on it reads the same
    features: its fbank settings, its normalisation (global CMVN with CORPUS's own statistics, not new ones), its
    vocabulary and its transcript normalisation."""
    c = Corpus(directory)
    record = c.meta.get("frontend")
    if record is None:
        raise OfflineKDError(f"--like {c.dir}: a corpus of precomputed features has no audio front end to copy")
    cmvn = record.get("cmvn") or {"kind": "none"}
    normalize = (c.meta.get("text_normalization") or {}).get("mode", "none")
    opts = replace(options, fbank=FbankOptions.from_record(record, f"--like {c.dir}"), cmvn=cmvn["kind"],
                   cmvn_stats={**cmvn, "from": str(c.dir)} if cmvn["kind"] == "global" else None,
                   normalize=normalize)
    return opts, c.vocab


def _row_key(r: AudioRow) -> list:
    a = r.audio
    return [r.uid, r.split, a.path, a.offset, a.duration, a.channel, r.text]


def _stat(path: str) -> list[int]:
    try:
        st = os.stat(path)
    except OSError:
        return [-1, -1]
    return [int(st.st_size), int(st.st_mtime_ns)]


# -------------------------------------------------------------------------------------------------- the worker
def compute_chunk(task: dict) -> dict:
    """Compute one chunk and store it as `task["path"]` (atomically). Returns its summary. Runs in a worker."""
    fb = Fbank(FbankOptions(**task["fbank"]))
    rate, frame_len = fb.options.sample_rate, fb.options.frame_length
    feats, frames, audio, samples, reasons = [], [], [], [], []
    seconds = 0.0
    for uid, where, spec in task["rows"]:
        try:
            x = load(spec, rate, task["resample"])
            if x.size < frame_len:
                raise AudioError(f"{x.size} samples at {rate} Hz: shorter than one frame ({frame_len} samples, "
                                 f"{fb.options.frame_length_ms:g} ms)")
            f = fb.compute(x)
            if task["cmvn"] == "utterance":
                f = normalise_utterance(f)
        except AudioError as exc:
            if not task["skip_invalid"]:
                return {"error": f"{where}: utterance {uid} ({spec.path}): {exc}"}
            reasons.append(str(exc))
            continue
        reasons.append("")
        feats.append(f)
        frames.append(f.shape[0])
        seconds += x.size / rate
        if task["keep_audio"]:
            audio.append(x)
            samples.append(x.size)
    dim = fb.options.num_mel_bins
    cat = np.concatenate(feats) if feats else np.zeros((0, dim), np.float32)
    arrays = {"features": cat, "frames": np.asarray(frames, np.int64), "reasons": np.asarray(reasons, dtype=str),
              "stat": np.asarray(task["stat"], np.int64).reshape(-1, 2), "key": np.asarray(task["key"]),
              "seconds": np.float64(seconds)}
    if task["cmvn"] == "global":                    # float64 sums for the statistics, merged in chunk order
        arrays["sum"], arrays["sumsq"] = cat.sum(0, dtype=np.float64), np.square(cat, dtype=np.float64).sum(0)
    if task["keep_audio"]:
        arrays["audio"] = np.concatenate(audio) if audio else np.zeros(0, np.int16)
        arrays["samples"] = np.asarray(samples, np.int64)
    path = Path(task["path"])
    tmp = path.with_name(path.stem + f".tmp{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return {"seconds": seconds, "n": len(task["rows"])}



# ------------------------------------------------------------------------------------------------- the driver
def import_audio(manifests: list[str], splits: list[str], out: str, fmt: str, vocab_path: Optional[str],
                 tokenizer: str, word_separator: str, options: AudioImportOptions, log=print,
                 bpe_model: Optional[str] = None, bpe_vocab_size: Optional[int] = None,
                 given_vocab: Optional[Vocabulary] = None) -> dict:
    options.check()
    outdir = Path(out)
    if outdir.exists() and (not outdir.is_dir() or any(outdir.iterdir())):
        raise OfflineKDError(f"{outdir} exists and is not empty; import into a new directory")
    rows = [r if r.text is None else replace(r, text=normalize_text(r.text, options.normalize) or None)
            for r in read_manifests(manifests, splits, fmt)]
    texts: dict[str, list[str]] = {}
    for r in rows:
        if r.text is not None:
            texts.setdefault(r.split, []).append(r.text)
    vocab = choose_vocab(texts, vocab_path, tokenizer, word_separator, bpe_model, bpe_vocab_size, given_vocab)
    bad = check_rows(rows, vocab, options.skip_invalid)
    stats = [_stat(r.audio.path) for r in rows]
    for i, st in enumerate(stats):
        if st[0] < 0 and i not in bad:
            bad[i] = "audio file not found"
    if bad and not options.skip_invalid:
        i = min(bad)
        more = f" (and {len(bad) - 1} more rows; --skip-invalid leaves them out)" if len(bad) > 1 else ""
        raise OfflineKDError(f"{rows[i].where}: utterance {rows[i].uid} ({rows[i].audio.path}): {bad[i]}{more}")
    if options.cmvn == "global" and options.cmvn_stats is None and options.cmvn_split not in {r.split for r in rows}:
        raise OfflineKDError(f"--cmvn global takes its statistics from split '{options.cmvn_split}', which no "
                             f"manifest row has (splits: {', '.join(sorted({r.split for r in rows}))}); give "
                             f"--cmvn-split")
    work = outdir.with_name(f".{outdir.name}.importing")
    outdir.parent.mkdir(parents=True, exist_ok=True)
    with WriterLock(work.with_name(work.name + ".lock"), f"import into {outdir}",
                    "wait for it to finish, or import into another --out"):
        if outdir.exists() and (not outdir.is_dir() or any(outdir.iterdir())):    # written while we waited
            raise OfflineKDError(f"{outdir} exists and is not empty; import into a new directory")
        job = _job(rows, options, manifests)
        _open_work_dir(work, job, log)
        plan = _plan(rows, bad, stats, work)
        _compute_chunks(plan, rows, options, work)
        counts, skipped = _assemble(plan, rows, bad, options, vocab, tokenizer, word_separator, work, manifests, log)
        if outdir.exists():
            outdir.rmdir()
        os.replace(work / "corpus", outdir)
        shutil.rmtree(work, ignore_errors=True)
    for split, n in counts.items():
        log(f"wrote {outdir / (split + '.h5')}: {n} utterances")
    if skipped:
        log(f"skipped {skipped} invalid rows: {outdir / SKIPPED_REPORT}")
    meta = json.loads((outdir / "corpus.json").read_text())
    log(f"{outdir}: {options.fbank.num_mel_bins}-dim features (model.input_dim), "
        f"{len((outdir / 'vocab.txt').read_text().splitlines())} tokens with the blank (model.num_classes), "
        f"front end {meta['frontend']['kind']} with cmvn {options.cmvn}")
    return counts


def _job(rows: list[AudioRow], options: AudioImportOptions, manifests: list[str]) -> dict:
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps(_row_key(r)).encode())
    chunk_opts = {"fbank": asdict(options.fbank), "cmvn": options.cmvn,
                  "keep_audio": options.keep_audio, "resample": options.resample,
                  "skip_invalid": options.skip_invalid, "chunk_utterances": CHUNK_UTTERANCES}
    h.update(json.dumps(chunk_opts, sort_keys=True).encode())
    return {"version": JOB_VERSION, "identity": h.hexdigest(), "manifests": manifests, "rows": len(rows)}


def _open_work_dir(work: Path, job: dict, log) -> None:
    meta = work / "job.json"
    if work.is_dir():
        try:
            old = json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if old is not None and old.get("identity") == job["identity"] and old.get("version") == JOB_VERSION:
            n = len(list(work.glob("*.npz")))
            log(f"resuming the import in {work}: {n} chunks already computed")
            shutil.rmtree(work / "corpus", ignore_errors=True)
            return
        log(f"discarding the unfinished import in {work} (other manifests or options)")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    tmp = meta.with_suffix(".tmp")
    tmp.write_text(json.dumps(job, indent=2) + "\n")
    os.replace(tmp, meta)


@dataclass
class _Chunk:
    split: str
    index: int
    rows: list          # row indices into the manifest rows (those not rejected before audio)
    path: Path
    stat: list = field(default_factory=list)    # (size, mtime_ns) of each row's file when planned
    key: str = ""       # sha256 of the rows' keys (id, file, segment, ...): a stored chunk is reused for these only


def _plan(rows: list[AudioRow], bad: dict, stats: list, work: Path) -> list[_Chunk]:
    by_split: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_split.setdefault(r.split, [])
        if i not in bad:
            by_split[r.split].append(i)
    chunks = []
    for split, idx in by_split.items():
        if not idx:
            first = min(i for i, r in enumerate(rows) if r.split == split)
            raise OfflineKDError(f"split '{split}': every row is invalid (first: {rows[first].where}: "
                                 f"{bad[first]})")
        # a chunk closes at CHUNK_UTTERANCES rows or CHUNK_SECONDS of audio (the manifest's durations, else the
        # file's size as 16-bit 16 kHz): memory stays bounded with hour-long recordings too
        members, seconds = [], 0.0
        for i in idx + [None]:
            if i is not None:
                sec = rows[i].audio.duration if rows[i].audio.duration is not None else max(stats[i][0], 0) / 32000
            if members and (i is None or len(members) == CHUNK_UTTERANCES or seconds + sec > CHUNK_SECONDS):
                k = len([c for c in chunks if c.split == split])
                chunks.append(_Chunk(split, k, members, work / f"{_safe(split)}.{k:07d}.npz"))
                members, seconds = [], 0.0
            if i is not None:
                members.append(i)
                seconds += sec
    for c in chunks:
        c.stat = [stats[i] for i in c.rows]
        c.key = hashlib.sha256(json.dumps([_row_key(rows[i]) for i in c.rows]).encode()).hexdigest()
    return chunks


def _safe(split: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in split) + "-" + \
        hashlib.sha256(split.encode()).hexdigest()[:8]


def _chunk_done(c: _Chunk) -> bool:
    if not c.path.is_file():
        return False
    try:
        with np.load(c.path, allow_pickle=False) as z:
            return str(z["key"]) == c.key and z["stat"].tolist() == c.stat
    except Exception:  # noqa: BLE001  (a damaged chunk is computed again)
        return False


def _compute_chunks(plan: list[_Chunk], rows: list[AudioRow], options: AudioImportOptions, work: Path) -> None:
    todo = [c for c in plan if not _chunk_done(c)]
    total_utts = sum(len(c.rows) for c in plan)
    done_utts = total_utts - sum(len(c.rows) for c in todo)
    bar = tqdm(total=total_utts, initial=done_utts, unit="utt", desc="import", disable=not options.progress,
               dynamic_ncols=True, file=sys.stderr)
    hours = 0.0

    def task(c: _Chunk) -> dict:
        return {"rows": [(rows[i].uid, rows[i].where, rows[i].audio) for i in c.rows], "stat": c.stat, "key": c.key,
                "fbank": asdict(options.fbank), "cmvn": options.cmvn, "keep_audio": options.keep_audio,
                "resample": options.resample, "skip_invalid": options.skip_invalid, "path": str(c.path)}

    def finished(c: _Chunk, res: dict) -> None:
        nonlocal hours
        if "error" in res:
            kept = sum(1 for x in plan if x.path.is_file())
            raise OfflineKDError(res["error"] + (f" ({kept} chunks computed so far are kept in {work}: the same "
                                                 f"command resumes)" if kept else ""))
        hours += res["seconds"] / 3600
        bar.update(res["n"])
        bar.set_postfix_str(f"{hours:.2f} h of audio" if hours >= 0.1 else f"{hours * 60:.1f} min of audio")

    with bar:
        if options.jobs == 1 or len(todo) <= 1:
            for c in todo:
                finished(c, compute_chunk(task(c)))
            return
        import multiprocessing
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=options.jobs, mp_context=ctx) as pool:
            pending, queue = {}, list(todo)
            try:
                while queue or pending:
                    while queue and len(pending) < 2 * options.jobs:
                        c = queue.pop(0)
                        pending[pool.submit(compute_chunk, task(c))] = c
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        c = pending.pop(fut)
                        try:
                            res = fut.result()
                        except BrokenProcessPool:
                            raise OfflineKDError(f"a worker process died while computing {c.split} rows "
                                                 f"{rows[c.rows[0]].where} to {rows[c.rows[-1]].where} (out of "
                                                 f"memory?); the chunks computed so far are kept in {work}: the same "
                                                 f"command resumes") from None
                        finished(c, res)
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise



def _frontend_record(plan: list[_Chunk], options: AudioImportOptions) -> tuple[dict, Optional[np.ndarray],
                                                                               Optional[np.ndarray]]:
    """(corpus.json's `frontend`, global CMVN mean, std): the statistics `--like` took from another corpus, or those
    of the chunks of --cmvn-split; no statistics for none or utterance CMVN."""
    frontend = options.fbank.to_dict()
    if options.cmvn == "global" and options.cmvn_stats is not None:
        frontend["cmvn"] = dict(options.cmvn_stats)
        return (frontend, np.asarray(frontend["cmvn"]["mean"], dtype=np.float32),
                np.asarray(frontend["cmvn"]["std"], dtype=np.float32))
    if options.cmvn != "global":
        frontend["cmvn"] = {"kind": options.cmvn}
        return frontend, None, None
    stats = GlobalStats(options.fbank.num_mel_bins)
    for c in plan:
        if c.split == options.cmvn_split:
            with np.load(c.path, allow_pickle=False) as z:
                stats.add(int(z["frames"].sum()), z["sum"], z["sumsq"])
    if stats.n == 0:
        raise OfflineKDError(f"--cmvn global: split '{options.cmvn_split}' has no valid utterance")
    mean, std = stats.mean_std()
    frontend["cmvn"] = {"kind": "global", "split": options.cmvn_split, "frames": stats.n,
                        "mean": [float(v) for v in mean], "std": [float(v) for v in std]}
    return frontend, mean, std


def _write_split(corpus: Path, split: str, chunks: list, rows: list, reasons: dict, options: AudioImportOptions,
                 mean, std) -> int:
    """One split's HDF5 file from its stored chunks (global CMVN applied), one chunk in memory at a time; a split
    whose every row is invalid is an error. -> utterances written."""
    fb = options.fbank
    transcribed = rows[chunks[0].rows[0]].text is not None
    writer = SplitWriter(corpus / f"{split}.h5", fb.num_mel_bins, transcribed=transcribed,
                         audio_sample_rate=fb.sample_rate if options.keep_audio else None)
    n = 0
    try:
        for c in chunks:
            with np.load(c.path, allow_pickle=False) as z:
                feats, frames = z["features"], z["frames"]
                if mean is not None:
                    feats = apply_global(feats, mean, std)
                audio, samples = (z["audio"], z["samples"]) if options.keep_audio else (None, None)
                kept = [i for i, why in zip(c.rows, z["reasons"].tolist()) if not why]
            fo = np.concatenate([[0], np.cumsum(frames)])
            ao = np.concatenate([[0], np.cumsum(samples)]) if samples is not None else None
            for k, i in enumerate(kept):
                writer.add(rows[i].uid, feats[fo[k]:fo[k + 1]], rows[i].text or "",
                           audio[ao[k]:ao[k + 1]] if ao is not None else None)
                n += 1
        if n == 0:
            first = min(i for i in reasons if rows[i].split == split)
            raise OfflineKDError(f"split '{split}': every row is invalid (first: {rows[first].where}: "
                                 f"{reasons[first]})")
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return n


def _assemble(plan: list[_Chunk], rows: list[AudioRow], bad: dict, options: AudioImportOptions,
              vocab: Optional[Vocabulary], tokenizer: str, word_separator: str, work: Path, manifests: list[str],
              log) -> tuple[dict, int]:
    """Write the corpus into `work/corpus` from the stored chunks, one chunk in memory at a time."""
    reasons = dict(bad)
    for c in plan:                                    # rows the workers left out (--skip-invalid)
        with np.load(c.path, allow_pickle=False) as z:
            for i, why in zip(c.rows, z["reasons"].tolist()):
                if why:
                    reasons[i] = why
    fb = options.fbank
    frontend, mean, std = _frontend_record(plan, options)
    ok = [i for i in range(len(rows)) if i not in reasons]
    if vocab is None:
        texts = [rows[i].text for i in ok if rows[i].text is not None]
        if not texts:
            raise OfflineKDError(f"{', '.join(manifests)}: no row has a transcript, so there is no vocabulary to "
                                 f"build; give --vocab")
        vocab = build_vocab(texts, tokenizer, word_separator)
    corpus = work / "corpus"
    shutil.rmtree(corpus, ignore_errors=True)
    corpus.mkdir()
    counts: dict[str, int] = {}
    by_split: dict[str, list[_Chunk]] = {}
    for c in plan:
        by_split.setdefault(c.split, []).append(c)
    for split, chunks in by_split.items():
        counts[split] = _write_split(corpus, split, chunks, rows, reasons, options, mean, std)
    manifest_names = ", ".join(Path(m).name for m in manifests)
    write_corpus_meta(corpus, vocab, fb.num_mel_bins, source=f"offline-kd data import {manifest_names}",
                      frontend=frontend, audio={"sample_rate": fb.sample_rate, "kept": options.keep_audio},
                      **({"text_normalization": text_rules(options.normalize)} if options.normalize != "none" else {}))
    if reasons:
        lines = ["id\tsplit\trow\tfile\treason"]
        for i in sorted(reasons):
            r = rows[i]
            lines.append("\t".join([r.uid, r.split, r.where, r.audio.path, " ".join(reasons[i].split())]))
        (corpus / SKIPPED_REPORT).write_text("\n".join(lines) + "\n")
    return counts, len(reasons)

