"""`offline-kd cache info`: what a cache holds and what it costs on disk, per field and per frame."""

from __future__ import annotations

from offline_kd.cache.confidence import MEMBERS, read as read_confidence, summary as confidence_summary
from offline_kd.cache.fields import PROVIDED, extra_field_specs, is_field_name
from offline_kd.cache.layout import open_group, read_meta
from offline_kd.cache.meta import CacheMeta
from offline_kd.cache.progress import split_progress
from offline_kd.cache.store import FITTED_STATE_GROUPS


def _stored_bytes(arr) -> int:
    try:
        return int(arr.nbytes_stored())
    except Exception:  # noqa: BLE001 - stores that cannot list sizes
        return 0


def cache_info(path: str, storage_options: dict | None = None) -> dict:
    root = open_group(path, "r", storage_options)
    meta = CacheMeta.from_dict(read_meta(root, path), path)
    v = meta.num_classes
    dims = meta.layer_dims
    float32_per_frame = 4 * (v + sum(dims.values()))
    splits, totals = {}, {}
    total_frames = 0
    for s in meta.splits:
        if s not in root:
            continue
        g = root[s]
        fields: dict[str, int] = {}
        for name, node in g.members(max_depth=None):
            if hasattr(node, "nbytes_stored") and hasattr(node, "shape"):
                top = name.split("/")[0]
                fields[top] = fields.get(top, 0) + _stored_bytes(node)
        frames = int(g.attrs.get("num_frames", 0))
        total_frames += frames
        splits[s] = {"utterances": int(g.attrs.get("num_utterances", 0)), "frames": frames,
                     "utterances_done": split_progress(g)[1] if g.attrs.get("created") else 0,
                     "complete": bool(g.attrs.get("complete")), "bytes": fields,
                     "lm_nbest": int(g.attrs.get("lm_nbest", 0))}
        splits[s].update(_confidences(g))
        for k, b in fields.items():
            totals[k] = totals.get(k, 0) + b
    per_frame = {k: b / max(total_frames, 1) for k, b in totals.items()}
    # targets = what the loss consumes: log-probs + hidden states (+ the 1-best path); index arrays are overhead
    extra = {e["name"] for e in extra_field_specs(meta.codecs)        # further per-frame fields (dump.fields),
             if e["name"] not in PROVIDED}                             # not an ensemble's member_probs (no loss reads it)
    target_keys = [k for k in totals if is_field_name(k) or k in extra]
    target_per_frame = sum(per_frame[k] for k in target_keys)
    all_bytes = sum(totals.values()) + sum(_stored_bytes(a) for _, a in root.members(max_depth=None)
                                           if _.split("/")[0] in FITTED_STATE_GROUPS and hasattr(a, "nbytes_stored"))
    # the codebook codec's relative reconstruction error on its fit sample, per layer (stored with its codebooks)
    codebook_error = {int(L): float(root[f"codebook/hidden_{L}/fit_error"][0]) for L, spec in meta.codecs["hidden"].items()
                      if spec.get("name") == "codebook" and f"codebook/hidden_{L}/fit_error" in root}
    return {
        "path": path, "complete": meta.complete, "format_version": meta.format_version,
        "tool_version": meta.tool_version, "created": meta.created,
        "teacher_path": meta.teacher["path"], "teacher_sha256": meta.teacher["sha256"], "teacher_weights_sha256": meta.teacher["weights_sha256"],
        "teacher_model_config": meta.teacher["model_config"], "teacher_dev": meta.teacher_dev,
        "teacher_cached_dev": meta.teacher.get("cached_dev"),
        "teacher_precision": meta.dump_config.get("precision", "fp32"), "device_type": meta.device_type,
        "vocab_sha256": meta.vocab_sha256,
        "identity_sha256": meta.identity_sha256, "num_classes": v, "layers": dims,
        "subsampling": meta.subsampling, "codecs": meta.codecs,
        "utterances": sum(x["utterances"] for x in splits.values()), "frames": total_frames,
        "bytes_total": all_bytes, "bytes_per_field": totals, "bytes_per_frame": per_frame,
        "target_bytes_per_frame": target_per_frame, "float32_bytes_per_frame": float32_per_frame,
        "ratio_to_float32": target_per_frame / float32_per_frame, "splits": splits,
        "views": meta.views, "frontend": meta.extra.get("frontend"),
        "teacher_adapter": meta.teacher.get("adapter", "checkpoint"),
        "teacher_name": meta.teacher_name,
        "teacher_alignment": meta.teacher.get("alignment"),
        "teacher_coverage": meta.extra.get("teacher_coverage"),
        "teacher_members": _members(meta.teacher),
        "codebook_relative_error": codebook_error,
    }


def _members(teacher: dict) -> list | None:
    """An ensemble's members: [{name, weight, dev}], None for a single teacher."""
    if teacher.get("adapter") != "ensemble":
        return None
    return [{"name": m.get("name", m["path"]), "weight": w, "dev": m.get("dev")}
            for m, w in zip(teacher["members"], teacher["weights"])]


def _teacher_source(info: dict) -> str:
    """How the teacher's source names itself in its record (the dump's teacher source writes it)."""
    return info.get("teacher_name") or f"teacher {info['teacher_path']}"


def _alignment(a: dict) -> list[str]:
    """The alignment lines of `cache info` (teachers/alignment.py records them)."""
    v, f = a.get("vocabulary", {}), a.get("frames", {})
    counts = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in (v.get("counts") or {}).items())
    out = [f"  vocabulary alignment: {v.get('kind')} ({counts})"
           + (f"; student tokens no teacher class reaches ({len(v['unreached'])}): "
              f"{', '.join(map(repr, v['unreached']))}" if v.get("unreached") else "")
           + (f"; mapping file {v['mapping_file']}" if v.get("mapping_file") else ""),
           f"  frame alignment: teacher frame shift {f.get('teacher_frame_shift')}, student "
           f"{f.get('student_frame_shift')} {f.get('unit')}: posteriors {f.get('posteriors')}, hidden "
           f"{f.get('hidden')}; lengths {f.get('lengths')}"]
    return out


def _coverage(c: dict) -> list[str]:
    """The coverage lines of `cache info` (teachers/coverage.py measures them at the dump)."""
    out = []
    if c.get("unreached_in_transcripts"):
        out.append("  unreached tokens the transcripts use (dumped with dump.allow_unreached): " + ", ".join(
            f"{t!r} {n}x" for t, n in c["unreached_in_transcripts"].items()))
    d = c.get("dropped_mass")
    if d:
        out.append(f"  teacher probability on dropped classes: mean {100 * d['mean']:.2f}% over {d['utterances']} "
                   f"utterances, worst {100 * d['worst']:.2f}% ({d['worst_utterance']})")
    return out


def format_info(info: dict) -> str:
    c = info["codecs"]
    def settings(spec: dict) -> str:
        rest = {k: v for k, v in spec.items() if k not in ("name", "dim", "num_classes")}
        return spec["name"] + (f" ({', '.join(f'{k} {v}' for k, v in rest.items())})" if rest else "")
    hidden = ", ".join(f"{L}: {settings(spec)}" for L, spec in c["hidden"].items())
    lines = [
        f"cache {info['path']}  ({'complete' if info['complete'] else 'INCOMPLETE'}, format v{info['format_version']}, "
        f"offline-kd {info['tool_version']}, created {info['created']})",
        f"  teacher: {_teacher_source(info)}",
        f"  teacher sha256 {info['teacher_sha256'][:16]}  vocab sha256 {info['vocab_sha256'][:16]}  "
        f"identity {info['identity_sha256'][:16]}",
        f"  classes {info['num_classes']}, layers {info['layers']}, subsampling {info['subsampling']}; teacher forward "
        f"{info.get('teacher_precision', 'fp32')} on {info.get('device_type', '?')}",
        "  teacher dev " + _dev_line(info.get("teacher_dev"), info.get("teacher_cached_dev")),
        f"  codecs: log_probs {settings(c['log_probs'])}; hidden {{{hidden}}}; compressor {c['compressor']} "
        f"level {c['level']}",
        f"  {info['utterances']} utterances, {info['frames']} frames, {info['bytes_total'] / 1e6:.2f} MB on disk",
    ]
    if info.get("codebook_relative_error"):
        lines.insert(-1, "  codebook reconstruction error (relative, sum (x - x')^2 / sum x^2 on the fit sample): "
                         + ", ".join(f"layer {L} {e:.4f}" for L, e in sorted(info["codebook_relative_error"].items())))
    if info.get("teacher_alignment"):
        lines[2:2] = _alignment(info["teacher_alignment"]) + _coverage(info.get("teacher_coverage") or {})
    for k, m in reversed(list(enumerate(info.get("teacher_members") or [], start=1))):
        cov = ((info.get("teacher_coverage") or {}).get("members") or [None] * k)[k - 1] or {}
        dev = f", dev WER {m['dev']['wer']:.2f}%" if (m.get("dev") or {}).get("wer") is not None else ""
        lines[2:2] = [f"  teacher {k}: {m['name']}, weight {m['weight']:.3f}{dev}"] + _coverage(cov)
    fe = info.get("frontend")
    if fe:
        lines.insert(-1, f"  corpus front end: {fe.get('kind')} {fe.get('num_mel_bins')} bins, "
                         f"{fe.get('frame_length_ms')} / {fe.get('frame_shift_ms')} ms at {fe.get('sample_rate')} Hz, "
                         f"cmvn {(fe.get('cmvn') or {}).get('kind', 'none')}")
    for s, x in info["splits"].items():
        lines.append(f"  split {s}: {x['utterances_done']}/{x['utterances']} utterances, {x['frames']} frames"
                     f"{'' if x['complete'] else ' (incomplete)'}"
                     + (f"; LM {x['lm_nbest']}-best of every utterance" if x.get("lm_nbest") else "")
                     + (f"; teacher confidence p10 {x['confidence']['p10']:.3f} median {x['confidence']['p50']:.3f} "
                        f"p90 {x['confidence']['p90']:.3f}" if x.get("confidence") else "")
                     + ("; each teacher's confidence in that 1-best, median "
                        + " / ".join(f"{m['p50']:.3f}" for m in x["member_confidence"])
                        if x.get("member_confidence") else ""))
    views = info.get("views") or {}
    if views.get("views"):
        lines.append(f"  views of {', '.join(views['splits'])} (split@k), seed {views['seed']}: "
                     + "; ".join(f"{k}: {v}" for k, v in enumerate(views["views"])))
    lines.append("  bytes per frame:")
    for k, b in sorted(info["bytes_per_frame"].items()):
        lines.append(f"    {k:<16} {b:10.1f}")
    lines.append(f"  targets {info['target_bytes_per_frame']:.1f} B/frame = {100 * info['ratio_to_float32']:.2f}% of "
                 f"float32 ({info['float32_bytes_per_frame']} B/frame)")
    return "\n".join(lines)


def _dev_line(dev: dict | None, cached: dict | None) -> str:
    """The teacher's recorded dev figures (its checkpoint's, else the cache's own) and, where both exist and
    differ in kind, the greedy figures of the cached dev split beside them."""
    if not dev:
        return "figures not recorded"
    if dev == cached:
        return (f"WER {dev['wer']:.2f}% CER {dev['cer']:.2f}% (greedy, the cached 1-best of {dev['split']} of "
                f"{dev['corpus']})")
    line = (f"WER {dev['wer']:.2f}% CER {dev['cer']:.2f}% (epoch {dev['epoch']}, {dev['split']} of "
            f"{dev['corpus']})")
    if cached:
        line += f"; the cached {cached['split']} split's 1-best: WER {cached['wer']:.2f}% CER {cached['cer']:.2f}%"
    return line


def _confidences(g) -> dict:
    """A split's stored confidence quantiles, and an ensemble's for each member (in the 1-best), where present."""
    out = {}
    conf = read_confidence(g)
    if conf is not None:
        out["confidence"] = confidence_summary(conf)
    members = read_confidence(g, MEMBERS)
    if members is not None:
        out["member_confidence"] = [confidence_summary(members[:, i]) for i in range(members.shape[1])]
    return out
