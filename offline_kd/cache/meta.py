"""The cache's metadata (root attribute `offline_kd`) as a typed record: what the dump writes, what readers read,
and the identity that decides whether a rerun resumes. Keys a newer writer adds are kept in `extra` and written
back unchanged, so a round trip never loses them."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Optional

from offline_kd.cache.layout import FORMAT_VERSION
from offline_kd.errors import OfflineKDError


def safe_name(name) -> bool:
    """A split or layer name read from a cache can name a group in it and nothing else: a non-empty string with no
    path separator, NUL or control character, and not "." or ".."."""
    return (isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\:")
            and all(ord(c) >= 32 for c in name))


def _check_names(d: dict, where: str) -> None:
    """Refuse metadata whose split or layer names would be paths (they become zarr group paths)."""
    def bad(what, names):
        wrong = [n for n in names if not safe_name(n)]
        if wrong:
            raise OfflineKDError(f"{where}: cache metadata {what} {wrong[0]!r} is not a plain name (no '/', '\\', "
                                 f"':', '..' or control characters); the metadata was edited or damaged")
    if not isinstance(d["splits"], list):
        raise OfflineKDError(f"{where}: cache metadata 'splits' is not a list")
    bad("split", d["splits"])
    for key, names in (("layers", d["layers"]), ("codecs.hidden", (d.get("codecs") or {}).get("hidden", {}))):
        if not isinstance(names, dict) or not all(isinstance(k, str) and k.isdigit() for k in names):
            raise OfflineKDError(f"{where}: cache metadata '{key}' must map layer numbers to values")
    views = (d.get("dump_config") or {}).get("view_splits") or []
    bad("view split", views if isinstance(views, list) else [views])


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class CacheMeta:
    format_version: int
    tool_version: str
    complete: bool
    created: str
    teacher: dict                 # path, sha256 (file), weights_sha256, model_config, dev (its recorded dev WER/CER)
    vocab: dict
    vocab_sha256: str
    corpus: str
    subsampling: int
    num_classes: int
    layers: dict                  # {"L": hidden width}
    codecs: dict                  # {"log_probs": spec, "hidden": {"L": spec}, "compressor", "level"}
    chunk_frames: int
    shard_frames: int
    splits: list
    device_type: str
    dump_config: dict             # the resolved dump config, without storage options
    identity_sha256: str = ""
    completed: Optional[str] = None
    extra: dict = field(default_factory=dict)

    # ------------------------------------------------------------------------------------------ stored form
    @classmethod
    def from_dict(cls, d: dict, where: str = "cache") -> "CacheMeta":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.name in names and f.default is dataclasses.MISSING and f.name not in d)
        if missing:
            raise OfflineKDError(f"{where}: cache metadata lacks {', '.join(missing)} (not written by offline-kd, "
                                 f"or damaged)")
        _check_names(d, where)
        if d["teacher"].get("adapter") == "huggingface" and "sha256_in_identity" not in d["teacher"]:
            d = {**d, "teacher": {**d["teacher"], "sha256_in_identity": True}}     # (stored before sources said so)
        return cls(**{k: v for k, v in d.items() if k in names}, extra={k: v for k, v in d.items() if k not in names})

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "extra" and not (k == "completed" and v is None)}
        return {**d, **self.extra}

    # ------------------------------------------------------------------------------------------------ views
    @property
    def layer_dims(self) -> dict[int, int]:
        return {int(k): int(v) for k, v in self.layers.items()}

    @property
    def teacher_name(self) -> str:
        """How the teacher's source named it in the record (`cache info`); caches dumped before sources named
        themselves are named from their record's path (an entry point's starts with `entry_point:`)."""
        t = self.teacher
        if t.get("name"):
            return t["name"]
        kind, _, rest = str(t.get("path")).partition(":")
        if kind == "entry_point" and rest:
            return f"entry point {rest} (args in the cache's metadata)"
        return f"{t.get('adapter', 'checkpoint').replace('huggingface', 'Hugging Face model')} {t.get('path')}"

    @property
    def teacher_dev(self) -> Optional[dict]:
        """The teacher checkpoint's own dev figures {wer, cer, epoch, corpus, split}; where it recorded none (a
        teacher from an entry point, a Hugging Face directory, an ensemble), those of the cached dev split's 1-best
        (`cached_dev`, cache/dev_figures.py: no epoch); None when neither is recorded."""
        return self.teacher.get("dev") or self.teacher.get("cached_dev")

    @property
    def views(self) -> dict:
        """The cache's augmented views: {"views": [spec dicts], "splits": [corpus splits cached through them],
        "seed": int}; no views: empty lists."""
        d = self.dump_config
        return {"views": list(d.get("views") or []), "splits": list(d.get("view_splits") or []),
                "seed": int(d.get("view_seed", 0))}

    def codec_names(self) -> tuple[str, dict[int, str]]:
        return self.codecs["log_probs"]["name"], {int(k): v["name"] for k, v in self.codecs["hidden"].items()}

    # ---------------------------------------------------------------------------------------------- changes
    def identity(self, plans: dict) -> str:
        """What must match for a rerun to resume rather than start over: teacher, vocabulary, data, settings."""
        h = hashlib.sha256()
        d = self.dump_config
        keys = {k: d[k] for k in ("layers", "batch_size", "max_frames_per_batch", "chunk_frames", "shard_chunks",
                                   "skip_invalid", "codecs", "splits")}
        if d.get("lm_targets"):
            keys["lm_targets"] = d["lm_targets"]
        if d.get("views"):                           # (no views leaves the identity of older caches as it was)
            keys.update({k: d[k] for k in ("views", "view_splits", "view_seed")})
        if d.get("precision", "fp32") != "fp32":     # (fp32 leaves the identity of older caches as it was)
            keys["precision"] = d["precision"]
        if self.extra.get("frontend"):               # the corpus's audio front end (corpora imported from audio)
            keys["frontend"] = self.extra["frontend"]
        if self.teacher.get("alignment"):            # a teacher mapped onto the student's vocabulary and frames
            keys["alignment"] = self.teacher["alignment"]
        if self.teacher.get("sha256_in_identity"):   # e.g. a Hugging Face model's config and preprocessing
            keys["teacher_sha256"] = self.teacher["sha256"]
        h.update(json.dumps([self.teacher["weights_sha256"], self.vocab_sha256, self.device_type, keys],
                            sort_keys=True).encode())
        for split, p in plans.items():
            h.update(split.encode())
            for u, fh in zip(p.utterance_ids, p.hashes):
                h.update(f"{u}:{fh}".encode())
        return h.hexdigest()

    def differs_only_in_lm_targets(self, old: dict, plans: dict) -> bool:
        """True when `old` (a cache's stored metadata) has this dump's identity but for `dump.lm_targets` (the LM
        N-best settings): every cached frame is what this dump would write, and only the N-best stage differs."""
        d = {**self.dump_config, "lm_targets": (old.get("dump_config") or {}).get("lm_targets")}
        return dataclasses.replace(self, dump_config=d).identity(plans) == old.get("identity_sha256")

    def added_splits(self, old: dict, plans: dict) -> list[str]:
        """The splits this dump adds to the cache whose stored metadata is `old`, where it is that cache's dump
        with more splits and nothing else changed (teacher, corpus, settings and every cached split's utterances
        the same; `dump.lm_targets` the same but for the new splits it may name); else []."""
        have = list(old.get("splits") or [])
        added = [s for s in plans if s not in have]
        if not have or not added or any(s not in plans for s in have):
            return []
        old_cfg = old.get("dump_config") or {}
        new_lm, old_lm = self.dump_config.get("lm_targets"), old_cfg.get("lm_targets")
        if (new_lm is None) != (old_lm is None):
            return []
        if new_lm is not None:
            rest = lambda d: {k: v for k, v in d.items() if k != "splits"}  # noqa: E731
            if rest(new_lm) != rest(old_lm) or [s for s in new_lm["splits"] if s in old_cfg.get("splits", [])] \
                    != list(old_lm["splits"]):
                return []
        d = {**self.dump_config, "splits": old_cfg.get("splits"), "lm_targets": old_lm}
        same = dataclasses.replace(self, dump_config=d).identity({s: plans[s] for s in have})
        return added if same == old.get("identity_sha256") else []

    def with_identity(self, plans: dict) -> "CacheMeta":
        return dataclasses.replace(self, identity_sha256=self.identity(plans))

    def completed_now(self) -> "CacheMeta":
        return dataclasses.replace(self, complete=True, completed=_now())

    @classmethod
    def for_dump(cls, cfg, model, vocab, corpus_dir: str, lp_codec, hidden_codecs: dict, device_type: str,
                 teacher_sha256: str, weights_sha256: str, tool_version: str,
                 teacher_dev: Optional[dict] = None, splits: Optional[list] = None,
                 frontend: Optional[dict] = None, teacher_record: Optional[dict] = None,
                 coverage: Optional[dict] = None, extra_fields: Optional[list] = None) -> "CacheMeta":
        """`teacher_record`: where the teacher came from (path, and for an entry point its adapter, entry point and
        args); without it, `cfg.teacher` is the checkpoint's path. `extra_fields`: the further per-frame fields'
        specs ([{name, dtype, shape}])."""
        layer_dims = {L: c.dim for L, c in hidden_codecs.items()}
        return cls(
            format_version=FORMAT_VERSION, tool_version=tool_version, complete=False, created=_now(),
            teacher={"path": str(cfg.teacher) if teacher_record is None else teacher_record["path"],
                     "sha256": teacher_sha256, "weights_sha256": weights_sha256,
                     "model_config": model.describe(),
                     **({"model_type": model.model_type} if model.model_type != "bilstm" else {}),
                     **({"dev": teacher_dev} if teacher_dev else {}),
                     **{k: v for k, v in (teacher_record or {}).items() if k not in ("path", "sha256")}},
            vocab=vocab.to_dict(), vocab_sha256=vocab.sha256, corpus=corpus_dir,
            subsampling=model.subsampling, num_classes=model.num_classes,
            layers={str(L): d for L, d in layer_dims.items()},
            codecs={"log_probs": lp_codec.to_dict(), "hidden": {str(L): c.to_dict() for L, c in hidden_codecs.items()},
                    "compressor": cfg.codecs.compressor, "level": cfg.codecs.level,
                    **({"fields": extra_fields} if extra_fields else {})},
            chunk_frames=cfg.chunk_frames, shard_frames=cfg.chunk_frames * cfg.shard_chunks,
            splits=list(splits if splits is not None else cfg.splits), device_type=device_type,
            dump_config={k: v for k, v in asdict(cfg).items()
                         if k != "storage_options" and not (k == "subsampling" and v is None)
                         and not (k == "fields" and not v)},
            extra={**({"frontend": frontend} if frontend else {}),
                   **({"teacher_coverage": coverage} if coverage else {})})
