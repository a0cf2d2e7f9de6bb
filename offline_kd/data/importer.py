"""`offline-kd data import`: HDF5 splits from per-utterance .npy feature files and a transcript manifest.

Manifest formats (paths relative to the manifest's folder unless absolute):
  JSONL  one object per line: {"id": "utt1", "features": "feats/utt1.npy", "text": "hello world", "split": "train"}
  TSV    id<TAB>features.npy<TAB>text[<TAB>split]
The split comes from `--split` or the row's split field. Without `--vocab`, the vocabulary is built from all
transcripts (sorted units, `<blank>` first; for `char`, the word separator too).

Untranscribed audio: rows without text (JSONL: no "text" or null; TSV: an empty text field, or just
id<TAB>features) make a split of untranscribed audio, which the teacher's cache covers and `train-student` can mix in
(distill.untranscribed_splits). A split is either wholly transcribed or wholly untranscribed.

The corpus is built in a temporary directory beside `--out` and renamed into place once every split is written: a
failure leaves nothing behind, and what a killed import left (`.NAME.importing-PID`, its process gone) the next
import into the same `--out` removes.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np

from offline_kd.atomic import atomic_directory
from offline_kd.data.bpe import choose_vocab
from offline_kd.data.corpus import SplitWriter, write_corpus_meta
from offline_kd.data.text import MODES as TEXT_MODES, normalize as normalize_text, rules as text_rules
from offline_kd.data.vocab import BLANK, Vocabulary
from offline_kd.errors import OfflineKDError


def read_manifest(path: Path, split_name: str | None) -> dict[str, list[tuple[str, Path, str]]]:
    rows: dict[str, list] = defaultdict(list)
    is_jsonl = path.suffix in (".jsonl", ".json")
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name}:{n}"
        if is_jsonl:
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise OfflineKDError(f"{where}: invalid JSON ({exc})") from None
            missing = [k for k in ("id", "features") if k not in row]
            if missing:
                raise OfflineKDError(f"{where}: missing key(s) {', '.join(missing)}")
            uid, feats, text, split = str(row["id"]), row["features"], row.get("text"), row.get("split")
            if text is not None and not isinstance(text, str):
                raise OfflineKDError(f"{where}: 'text' must be a string or null, got {type(text).__name__}")
        else:
            parts = line.split("\t")
            if len(parts) not in (2, 3, 4):
                raise OfflineKDError(f"{where}: expected id<TAB>features<TAB>text[<TAB>split], got {len(parts)} fields")
            uid, feats = parts[:2]
            text = parts[2] if len(parts) > 2 else None
            split = parts[3] if len(parts) == 4 else None
        split = split_name or split
        if not split:
            raise OfflineKDError(f"{where}: no split (give --split or a split field)")
        fp = Path(feats)
        rows[split].append((uid, fp if fp.is_absolute() else path.parent / fp, (text or "").strip() or None))
    if not rows:
        raise OfflineKDError(f"{path}: the manifest is empty")
    for split, items in rows.items():
        with_text = sum(t is not None for _, _, t in items)
        if 0 < with_text < len(items):
            first = next(u for u, _, t in items if t is None)
            raise OfflineKDError(f"split '{split}': {len(items) - with_text} of {len(items)} rows have no text "
                                 f"(first: {first}); a split is either transcribed or untranscribed: put the "
                                 f"untranscribed rows into a split of their own")
    return rows


def build_vocab(texts: list[str], tokenizer: str, word_separator: str) -> Vocabulary:
    units = set()
    for t in texts:
        if tokenizer == "word":
            units.update(t.split())
        else:
            units.update(ch for w in t.split() for ch in w)
    units.discard(word_separator)
    tokens = [BLANK] + ([word_separator] if tokenizer == "char" else []) + sorted(units)
    return Vocabulary(tuple(tokens), tokenizer, word_separator if tokenizer == "char" else None)


def import_manifest(manifest: str, out: str, split_name: str | None, vocab_path: str | None, tokenizer: str,
                    word_separator: str, log=print, normalize: str = "none", bpe_model: str | None = None,
                    bpe_vocab_size: int | None = None, given_vocab: Vocabulary | None = None) -> dict:
    mpath = Path(manifest)
    if not mpath.is_file():
        raise OfflineKDError(f"manifest not found: {mpath}")
    if normalize not in TEXT_MODES:
        raise OfflineKDError(f"--normalize must be one of {', '.join(TEXT_MODES)}, got {normalize!r}")
    rows = {s: [(u, f, None if t is None else normalize_text(t, normalize) or None) for u, f, t in r]
            for s, r in read_manifest(mpath, split_name).items()}
    vocab = choose_vocab({s: [t for _, _, t in r if t is not None] for s, r in rows.items()}, vocab_path, tokenizer,
                         word_separator, bpe_model, bpe_vocab_size, given_vocab)
    if vocab is None:
        texts = [t for r in rows.values() for _, _, t in r if t is not None]
        if not texts:
            raise OfflineKDError(f"{mpath}: no row has a transcript, so there is no vocabulary to build; give --vocab")
        vocab = build_vocab(texts, tokenizer, word_separator)
    for split, items in rows.items():
        for uid, _, text in items:
            unknown = sorted(set(vocab.unknown_units(text))) if text is not None else []
            if unknown:
                raise OfflineKDError(f"{mpath.name}: utterance {uid} (split '{split}'): {len(unknown)} unit(s) not in "
                                     f"the vocabulary: {' '.join(map(repr, unknown[:5]))} (--normalize folds case "
                                     f"and removes punctuation)")
    outdir = Path(out)
    if outdir.exists() and any(outdir.iterdir()):
        raise OfflineKDError(f"{outdir} exists and is not empty; import into a new directory")
    _remove_stale_imports(outdir, log)
    with atomic_directory(outdir, outdir.with_name(f".{outdir.name}.importing-{os.getpid()}")) as tmp:
        counts = _write_splits(rows, tmp, vocab, mpath, text_rules(normalize))
    for split, n in counts.items():
        log(f"wrote {outdir / (split + '.h5')}: {n} utterances")
    return counts


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # someone else's process: alive
        return True
    return True


def _remove_stale_imports(outdir: Path, log) -> None:
    """Remove the `.NAME.importing-PID` directories that imports into `outdir` killed before they could clean up
    left beside it (those whose process no longer exists; a live import keeps its own)."""
    prefix = f".{outdir.name}.importing-"
    parent = outdir.parent
    if not parent.is_dir():
        return
    for d in parent.iterdir():
        pid = d.name[len(prefix):]
        if d.name.startswith(prefix) and pid.isdigit() and d.is_dir() and not d.is_symlink() \
                and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
            log(f"removed {d}, left by an import that was stopped (process {pid} is gone)")


def _write_splits(rows: dict, outdir: Path, vocab: Vocabulary, mpath: Path, text_normalization=None) -> dict:
    feature_dim = None
    counts = {}
    for split, items in rows.items():
        writer = None
        transcribed = items[0][2] is not None
        try:
            for uid, fpath, text in items:
                if not fpath.is_file():
                    raise OfflineKDError(f"utterance {uid}: feature file not found: {fpath}")
                try:
                    feats = np.load(fpath, allow_pickle=False)
                except Exception as exc:  # noqa: BLE001
                    raise OfflineKDError(f"utterance {uid}: cannot read {fpath} ({exc})") from None
                if feats.ndim != 2:
                    raise OfflineKDError(f"utterance {uid}: {fpath} has shape {feats.shape}, expected (T, D)")
                if feature_dim is None:
                    feature_dim = int(feats.shape[1])
                if writer is None:
                    writer = SplitWriter(outdir / f"{split}.h5", feature_dim, transcribed=transcribed)
                writer.add(uid, feats, text or "")
            writer.close()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        counts[split] = len(items)
    write_corpus_meta(outdir, vocab, feature_dim, source=f"offline-kd data import {mpath.name}",
                      **({"text_normalization": text_normalization} if text_normalization else {}))
    return counts
