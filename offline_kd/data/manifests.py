"""Speech manifests in: NeMo JSONL, lhotse (CutSet, or RecordingSet + SupervisionSet), and plain audio lists.

Every reader gives `AudioRow`s: an utterance id, its split, where its samples are (`AudioSpec`: file, offset,
duration, channel) and its transcript (None: untranscribed). `where` names the manifest line or lhotse item, for
errors.

  nemo    JSONL, one object per line: "audio_filepath" (required), "duration", "offset", "text" (all optional),
          "id" or "utt_id" (else the id is the file's name without its suffix, plus "_<offset in ms>" for a row
          with an offset), "split" (else --split).
  list    JSONL {"id", "audio", "text", "split", "offset", "duration", "channel"} ("id" and "audio" required), or
          TSV id<TAB>audio<TAB>text[<TAB>split].
  lhotse  a CutSet (one supervision per cut: `cuts.trim_to_supervisions()` first if yours has more), a
          SupervisionSet together with its RecordingSet, or a RecordingSet alone (whole recordings, untranscribed);
          read with lhotse itself (`pip install offline-kd[lhotse]`); recording sources of type "file" only.

Relative audio paths are resolved against the manifest's folder (lhotse: against the working directory first, as
lhotse itself does, then the manifest's folder). A row's text of None or "" makes it untranscribed.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from offline_kd.data.audio import AudioSpec
from offline_kd.errors import OfflineKDError

FORMATS = ("auto", "nemo", "list", "lhotse", "features")


@dataclass(frozen=True)
class AudioRow:
    uid: str
    split: str
    audio: AudioSpec
    text: Optional[str]
    where: str
    longer_id: Optional[str] = None     # a derived id's fallback when file names collide (NeMo rows without id)


def detect_format(path: Path) -> str:
    """'nemo', 'list', 'lhotse' or 'features' (the .npy importer), from the file name and its first row."""
    name = path.name
    if name.endswith((".jsonl.gz", ".json.gz")):
        return "lhotse"
    first = _first_line(path)
    if first is None:
        raise OfflineKDError(f"{path}: the manifest is empty")
    if path.suffix in (".jsonl", ".json"):
        where, row = next(_json_rows(path))         # the first row, parsed and checked as every row is
        if "audio_filepath" in row:
            return "nemo"
        if "features" in row:
            return "features"
        if "audio" in row:
            return "list"
        if {"recording", "recording_id", "sources", "supervisions"} & set(row):
            return "lhotse"
        raise OfflineKDError(f"{where}: cannot tell the manifest kind: a row needs 'audio_filepath' (NeMo), "
                             f"'audio' or 'features' (plain list); or give --format")
    parts = first.split("\t")
    return "features" if len(parts) > 1 and parts[1].endswith(".npy") else "list"


def _first_line(path: Path) -> Optional[str]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                return line
    return None


def _resolve(base: Path, p: str) -> str:
    fp = Path(p).expanduser()
    return str(fp if fp.is_absolute() else base / fp)


def _num(row: dict, key: str, where: str, kind=float):
    """A non-negative finite number (JSON lets NaN and Infinity through), or None when the key is absent."""
    v = row.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)) \
            or not math.isfinite(v) or v < 0:
        raise OfflineKDError(f"{where}: '{key}' must be a {'whole ' if kind is int else ''}number >= 0, got {v!r}")
    return kind(v)


def _text(row: dict, key: str, where: str) -> Optional[str]:
    t = row.get(key)
    if t is not None and not isinstance(t, str):
        raise OfflineKDError(f"{where}: '{key}' must be a string or null, got {type(t).__name__}")
    t = " ".join((t or "").split())
    return t or None


def _json_rows(path: Path):
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path.name}:{n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise OfflineKDError(f"{where}: invalid JSON ({exc})") from None
            if not isinstance(row, dict):
                raise OfflineKDError(f"{where}: expected a JSON object")
            yield where, row


def read_nemo(path: Path, split: Optional[str]) -> list[AudioRow]:
    rows = []
    for where, row in _json_rows(path):
        if "audio_filepath" not in row or not isinstance(row["audio_filepath"], str):
            raise OfflineKDError(f"{where}: missing key 'audio_filepath' (a NeMo manifest row)")
        offset = _num(row, "offset", where) or 0.0
        uid, longer = row.get("id", row.get("utt_id")), None
        audio = _resolve(path.parent, row["audio_filepath"])
        if uid is None:           # the file's name; where names collide, its path (rule in read_manifests)
            seg = f"_{int(round(offset * 1000)):08d}" if offset else ""
            uid = Path(audio).stem + seg
            longer = "-".join(_relative_parts(audio, path.parent)) + seg
        rows.append(AudioRow(str(uid), _split(row, split, where),
                             AudioSpec(audio, offset,
                                       _num(row, "duration", where)),
                             _text(row, "text", where), where, longer))
    return rows


def _relative_parts(audio: str, folder: Path) -> list[str]:
    """The audio file's path relative to the manifest's folder, without its suffix, as folder names: the same
    wherever the corpus lies (an absolute path in the manifest included). A file outside that folder keeps the
    names below the folders the two share ('..' is dropped)."""
    rel = Path(os.path.relpath(os.path.abspath(audio), os.path.abspath(folder))).with_suffix("")
    return [p for p in rel.parts if p not in ("..", ".")]


def read_list(path: Path, split: Optional[str]) -> list[AudioRow]:
    rows = []
    if path.suffix in (".jsonl", ".json"):
        for where, row in _json_rows(path):
            missing = [k for k in ("id", "audio") if k not in row]
            if missing:
                raise OfflineKDError(f"{where}: missing key(s) {', '.join(missing)}")
            rows.append(AudioRow(str(row["id"]), _split(row, split, where),
                                 AudioSpec(_resolve(path.parent, str(row["audio"])), _num(row, "offset", where) or 0.0,
                                           _num(row, "duration", where), _num(row, "channel", where, int)),
                                 _text(row, "text", where), where))
        return rows
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            where = f"{path.name}:{n}"
            parts = line.split("\t")
            if len(parts) not in (2, 3, 4):
                raise OfflineKDError(f"{where}: expected id<TAB>audio<TAB>text[<TAB>split], got {len(parts)} fields")
            row = {"split": parts[3]} if len(parts) == 4 else {}
            rows.append(AudioRow(parts[0], _split(row, split, where), AudioSpec(_resolve(path.parent, parts[1])),
                                 " ".join((parts[2] if len(parts) > 2 else "").split()) or None, where))
    return rows


_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def check_split_name(s: str, where: str) -> str:
    """A split name is a file name (`{split}.h5`) and a cache group: letters, digits, '_', '-', '.', not leading '.'
    ('@' marks a view of a split in a cache)."""
    if not _SPLIT_NAME.match(s):
        raise OfflineKDError(f"{where}: split name {s!r} must be letters, digits, '_', '-' or '.' (not first)")
    return s


def _split(row: dict, split: Optional[str], where: str) -> str:
    s = split or row.get("split")
    if not s or not isinstance(s, str):
        raise OfflineKDError(f"{where}: no split (give --split, or a 'split' field in every row)")
    return check_split_name(s, where)


# ------------------------------------------------------------------------------------------------------ lhotse
def _lhotse():
    try:
        import lhotse
    except ImportError:
        raise OfflineKDError("reading lhotse manifests needs lhotse: pip install 'offline-kd[lhotse]' (or lhotse)") \
            from None
    return lhotse


def read_lhotse(paths: list[Path], split: Optional[str]) -> list[AudioRow]:
    """The rows of one split's lhotse manifests: CutSets, or a RecordingSet with or without a SupervisionSet."""
    lhotse = _lhotse()
    if not split:
        raise OfflineKDError(f"{paths[0]}: a lhotse manifest needs --split (lhotse items carry no split)")
    cuts, recordings, supervisions = [], None, None
    for p in paths:
        try:
            m = lhotse.load_manifest(p)
        except Exception as exc:  # noqa: BLE001  (lhotse says what it could not parse)
            raise OfflineKDError(f"{p}: not a readable lhotse manifest ({' '.join(str(exc).split())[:300]})") \
                from None
        if isinstance(m, lhotse.CutSet):
            cuts.append((p, m))
        elif isinstance(m, lhotse.RecordingSet):
            if recordings is not None:
                raise OfflineKDError(f"{p}: a second RecordingSet for split '{split}'; combine them first")
            recordings = (p, m)
        elif isinstance(m, lhotse.SupervisionSet):
            if supervisions is not None:
                raise OfflineKDError(f"{p}: a second SupervisionSet for split '{split}'; combine them first")
            supervisions = (p, m)
        else:
            raise OfflineKDError(f"{p}: a lhotse {type(m).__name__}; offline-kd reads a CutSet, or a RecordingSet "
                                 f"with or without a SupervisionSet")
    rows = []
    for p, cs in cuts:
        for cut in cs:
            where = f"{p.name}: cut {cut.id}"
            sups = list(getattr(cut, "supervisions", []) or [])
            if len(sups) > 1:
                raise OfflineKDError(f"{where}: {len(sups)} supervisions; offline-kd needs one per cut "
                                     f"(cuts.trim_to_supervisions() first)")
            rec = getattr(cut, "recording", None)
            if rec is None:
                raise OfflineKDError(f"{where}: has no recording (a {type(cut).__name__}); offline-kd reads cuts of "
                                     f"one recording")
            text = " ".join((sups[0].text or "").split()) or None if sups else None
            rows.append(AudioRow(cut.id, split, _lhotse_spec(rec, cut.start, cut.duration, cut.channel, p, where),
                                 text, where))
    if supervisions is not None:
        sp, sups = supervisions
        if recordings is None:
            raise OfflineKDError(f"{sp}: a SupervisionSet needs its RecordingSet (give both with --split {split})")
        rp, recs = recordings
        for s in sups:
            where = f"{sp.name}: supervision {s.id}"
            if s.recording_id not in recs:
                raise OfflineKDError(f"{where}: recording {s.recording_id} is not in {rp.name}")
            rows.append(AudioRow(s.id, split, _lhotse_spec(recs[s.recording_id], s.start, s.duration, s.channel, rp,
                                                           where), " ".join((s.text or "").split()) or None, where))
    elif recordings is not None:
        rp, recs = recordings
        for r in recs:
            rows.append(AudioRow(r.id, split, _lhotse_spec(r, 0.0, r.duration, None, rp, f"{rp.name}: recording {r.id}"),
                                 None, f"{rp.name}: recording {r.id}"))
    return rows


def _lhotse_spec(rec, start: float, duration: float, channel, manifest: Path, where: str) -> AudioSpec:
    if getattr(rec, "transforms", None):
        raise OfflineKDError(f"{where}: recording {rec.id} has transforms ({len(rec.transforms)}: speed or volume "
                             f"perturbation, resampling); offline-kd imports plain recordings")
    if len(rec.sources) != 1 or rec.sources[0].type != "file":
        kinds = ", ".join(s.type for s in rec.sources)
        raise OfflineKDError(f"{where}: recording {rec.id} has sources [{kinds}]; offline-kd reads one source of type "
                             f"'file'")
    src = rec.sources[0]
    path = Path(src.source)
    if not path.is_absolute() and not path.exists():
        path = manifest.parent / path
    if isinstance(channel, (list, tuple)):
        channel = channel[0] if len(channel) == 1 else None
    if channel is not None and len(rec.channel_ids) == 1:
        channel = None                                            # a mono file: nothing to choose
    return AudioSpec(str(path), float(start), float(duration), channel)


# ------------------------------------------------------------------------------------------------ all of them
def read_manifests(manifests: list[str], splits: list[str], fmt: str = "auto") -> list[AudioRow]:
    """Rows of every manifest, in order. `splits` is empty (rows carry their split), one name per manifest, or one
    name for a single manifest. lhotse manifests of one split are read together (recordings + supervisions)."""
    if splits and len(splits) != len(manifests):
        raise OfflineKDError(f"{len(manifests)} --manifest but {len(splits)} --split: give one --split per "
                             f"--manifest, in the same order, or none (rows carry a 'split' field)")
    for s in splits:
        check_split_name(s, "--split")
    paths = [Path(m) for m in manifests]
    for p in paths:
        if not p.is_file():
            raise OfflineKDError(f"manifest not found: {p}")
    kinds = [detect_format(p) if fmt == "auto" else fmt for p in paths]
    if "features" in kinds:
        raise OfflineKDError(f"{paths[kinds.index('features')]} lists .npy features, not audio: import it on its own "
                             f"(one --manifest) or give --format")
    rows: list[AudioRow] = []
    lhotse_groups: dict[Optional[str], list[Path]] = {}
    for i, (p, kind) in enumerate(zip(paths, kinds)):
        split = splits[i] if splits else None
        if kind == "lhotse":
            lhotse_groups.setdefault(split, []).append(p)
        elif kind == "nemo":
            rows += read_nemo(p, split)
        else:
            rows += read_list(p, split)
    for split, group in lhotse_groups.items():
        rows += read_lhotse(group, split)
    if not rows:
        raise OfflineKDError(f"{', '.join(manifests)}: no rows")
    # NeMo rows without an id take their file's name; rows whose names collide (SA1.wav in many speakers' folders)
    # take the file's path relative to the manifest's folder instead (folders joined by '-': spk2-SA1), so that the
    # corpus imported from another folder or machine gets the same ids
    count: dict[str, int] = {}
    for r in rows:
        count[r.uid] = count.get(r.uid, 0) + 1
    return [replace(r, uid=r.longer_id) if r.longer_id and count[r.uid] > 1 else r for r in rows]


def check_rows(rows: list[AudioRow], vocab=None, skip_invalid: bool = False) -> dict[int, str]:
    """Problems found without opening any audio: {row index: reason}: duplicate ids (the second and later rows),
    units outside `vocab`, and in a split where some rows have text, the rows without (an error outright unless
    `skip_invalid`: a split is either transcribed or untranscribed)."""
    bad: dict[int, str] = {}
    first: dict[str, int] = {}
    for i, r in enumerate(rows):
        if r.uid in first:
            bad[i] = f"duplicate id (first at {rows[first[r.uid]].where})"
        else:
            first[r.uid] = i
        if vocab is not None and r.text is not None and i not in bad:
            unknown = vocab.unknown_units(r.text)
            if unknown:
                bad[i] = f"{len(set(unknown))} unit(s) not in the vocabulary: " + \
                         " ".join(repr(u) for u in sorted(set(unknown))[:5])
    by_split: dict[str, list[AudioRow]] = {}
    for i, r in enumerate(rows):
        by_split.setdefault(r.split, []).append(r)
    for split, items in by_split.items():
        with_text = sum(r.text is not None for r in items)
        if 0 < with_text < len(items) and skip_invalid:
            for i, r in enumerate(rows):
                if r.split == split and r.text is None and i not in bad:
                    bad[i] = "no text, in a split of transcribed rows"
        elif 0 < with_text < len(items):
            r = next(x for x in items if x.text is None)
            raise OfflineKDError(f"split '{split}': {len(items) - with_text} of {len(items)} rows have no text (first: "
                                 f"{r.uid}, {r.where}); a split is either transcribed or untranscribed: put the "
                                 f"untranscribed rows into a split of their own")
    return bad

