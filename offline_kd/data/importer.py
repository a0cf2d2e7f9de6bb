"""`offline-kd data import`: HDF5 splits from per-utterance .npy feature files and a transcript manifest.

Manifest formats (paths relative to the manifest's folder unless absolute):
  JSONL  one object per line: {"id": "utt1", "features": "feats/utt1.npy", "text": "hello world", "split": "train"}
  TSV    id<TAB>features.npy<TAB>text[<TAB>split]
The split comes from `--split` or the row's split field. Without `--vocab`, the vocabulary is built from all
transcripts (sorted units, `<blank>` first; for `char`, the word separator too).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from offline_kd.data.corpus import SplitWriter, write_corpus_meta
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
            missing = [k for k in ("id", "features", "text") if k not in row]
            if missing:
                raise OfflineKDError(f"{where}: missing key(s) {', '.join(missing)}")
            uid, feats, text, split = str(row["id"]), row["features"], row["text"], row.get("split")
        else:
            parts = line.split("\t")
            if len(parts) not in (3, 4):
                raise OfflineKDError(f"{where}: expected id<TAB>features<TAB>text[<TAB>split], got {len(parts)} fields")
            uid, feats, text = parts[:3]
            split = parts[3] if len(parts) == 4 else None
        split = split_name or split
        if not split:
            raise OfflineKDError(f"{where}: no split (give --split or a split field)")
        fp = Path(feats)
        rows[split].append((uid, fp if fp.is_absolute() else path.parent / fp, text))
    if not rows:
        raise OfflineKDError(f"{path}: the manifest is empty")
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
                    word_separator: str, log=print) -> dict:
    mpath = Path(manifest)
    if not mpath.is_file():
        raise OfflineKDError(f"manifest not found: {mpath}")
    rows = read_manifest(mpath, split_name)
    sep = word_separator if tokenizer == "char" else None
    if vocab_path:
        vocab = Vocabulary.load(vocab_path, tokenizer, sep)
    else:
        vocab = build_vocab([t for r in rows.values() for _, _, t in r], tokenizer, word_separator)
    feature_dim = None
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, items in rows.items():
        writer = None
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
                    writer = SplitWriter(outdir / f"{split}.h5", feature_dim)
                writer.add(uid, feats, text)
            writer.close()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        counts[split] = len(items)
        log(f"wrote {outdir / (split + '.h5')}: {len(items)} utterances")
    write_corpus_meta(outdir, vocab, feature_dim, source=f"offline-kd data import {mpath.name}")
    return counts
