"""`offline-kd cache verify`: completeness, per-utterance checksums and shapes; with the teacher, fidelity.

Structural checks read every utterance's stored bytes back and compare them with the crc32 recorded by the writer,
and check offsets against the recorded input frame counts. With `--teacher`, a sample of utterances per split is
recomputed live and compared with the decoded cache: KL(live || cached) at T = 1, 3, 4 (mean and max per frame),
top-1 agreement, hidden-state relative squared error, and the greedy WER of cached vs live outputs.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from offline_kd.cache import integrity
from offline_kd.cache.layout import field_arrays, utterance_checksum
from offline_kd.cache.reader import TeacherCache
from offline_kd.cache.writer import shard_starts, shards_done, whole_utterances
from offline_kd.data.targets import collapse_best_path
from offline_kd.data.validate import output_frames
from offline_kd.decoding.metrics import error_rates
from offline_kd.errors import OfflineKDError
from offline_kd.training.numerics import exact_numerics, with_precision

TEMPERATURES = (1.0, 3.0, 4.0)
_READ_FRAMES = 65536   # structural check reads utterances in runs of about this many frames


def kl_per_frame(live: np.ndarray, cached: np.ndarray, temperature: float) -> np.ndarray:
    """KL(softmax(live/T) || softmax(cached/T)) per frame; inputs (F, V) log-probs."""
    p = torch.log_softmax(torch.from_numpy(live).double() / temperature, -1)
    q = torch.log_softmax(torch.from_numpy(cached).double() / temperature, -1)
    return (p.exp() * (p - q)).sum(-1).clamp_min(0).numpy()


def _stored_checksums(split) -> tuple[np.ndarray, np.ndarray]:
    """(checksums, whole): per utterance, its stored checksum and whether all its frames are stored. A complete
    split has them in `checksum`; an incomplete one in the per-shard rows of the shards written so far."""
    g = split.group
    if g.attrs.get("complete"):
        return g["checksum"][:], np.ones(len(split), dtype=bool)
    done = shards_done(g)
    sf = int(g.attrs["shard_frames"])
    starts = shard_starts(split.offsets, sf)
    rows = g["_progress/checksums"][:]
    sums = np.zeros(len(split), np.uint32)
    for sh in np.flatnonzero(done):
        sums[starts[sh]:starts[sh + 1]] = rows[sh, :starts[sh + 1] - starts[sh]]
    return sums, whole_utterances(done, split.offsets, sf)


def structural_check(cache: TeacherCache, log=print) -> dict:
    problems, checked = [], 0
    for s in cache.splits:
        attrs = cache.root[s].attrs if s in cache.root else {}
        if not (attrs.get("created") or attrs.get("complete")):
            problems.append(f"{s}: not started")
            continue
        split = cache.split(s)
        sums, whole = _stored_checksums(split)       # an incomplete split: only what is written
        if np.any(np.diff(split.offsets) < 0) or split.offsets[0] != 0:
            problems.append(f"{s}: offsets are not increasing")
        expected = output_frames(split.input_frames, cache.meta.subsampling)
        bad_len = np.nonzero(np.diff(split.offsets) != expected)[0]
        problems += [f"{s}/{split.utterance_ids[i]}: {int(np.diff(split.offsets)[i])} frames stored, "
                     f"{int(expected[i])} expected" for i in bad_len[:10]]
        n, lo = len(split), 0
        while lo < n:
            if not whole[lo]:
                lo += 1
                continue
            hi = int(np.searchsorted(split.offsets, split.offsets[lo] + _READ_FRAMES, side="right"))
            hi = min(max(hi - 1, lo + 1), n)
            hi = lo + int(np.argmin(whole[lo:hi])) if not whole[lo:hi].all() else hi
            try:
                raw = split.read_raw(lo, hi)
            except OfflineKDError as exc:           # an unreadable object: a finding, reported with its name
                problems.append(str(exc))
                checked += hi - lo
                lo = hi
                continue
            base = int(split.offsets[lo])
            for path, arr in raw.items():
                if arr.shape[0] != int(split.offsets[hi]) - base:
                    problems.append(f"{s}/{path}: shape {arr.shape} does not match the offsets")
            for p in range(lo, hi):
                a, b = int(split.offsets[p]) - base, int(split.offsets[p + 1]) - base
                if utterance_checksum(raw, a, b) != int(sums[p]):
                    problems.append(f"{s}/{split.utterance_ids[p]}: checksum mismatch")
                checked += 1
            lo = hi
    return {"utterances_checked": checked, "problems": problems}


@torch.no_grad()
def fidelity(cache: TeacherCache, teacher_path: str, sample: int, device: str, log=print,
             corpus_dir: str | None = None) -> dict:
    from offline_kd.data.corpus import Corpus
    from offline_kd.training.checkpoint import file_sha256, model_from_checkpoint
    from offline_kd.data.views import corpus_reader
    from offline_kd.training.inference import resolve_device
    dev = resolve_device(device)
    if file_sha256(teacher_path) != cache.meta.teacher["sha256"]:
        log(f"warning: {teacher_path} is not the checkpoint file the cache was made from (sha256 differs)")
    model, vocab, _ = model_from_checkpoint(teacher_path, dev)
    # the teacher recomputed in the precision the dump used (older caches: float32)
    model = with_precision(model, cache.meta.dump_config.get("precision", "fp32"), dev, "the cache's dump.precision")
    corpus = Corpus(corpus_dir or cache.meta.corpus)
    layers = cache.layers
    kls = {t: [] for t in TEMPERATURES}
    agree, frames, herr_num, herr_den = 0, 0, {L: 0.0 for L in layers}, {L: 0.0 for L in layers}
    refs, hyps = [], []
    for s in cache.splits:
        split = cache.split(s)
        reader = corpus_reader(corpus, s, cache.meta.views)      # a view's split: the corpus seen through it
        positions = np.linspace(0, len(split) - 1, num=min(sample, len(split))).round().astype(int)
        for p in sorted(set(positions.tolist())):
            u = split.utterance_ids[p]
            if u not in reader.index:
                raise OfflineKDError(f"utterance {u} of the cache is not in {reader.path}")
            i = reader.index[u]
            x = torch.from_numpy(reader.features(i))[None].to(dev)
            with exact_numerics():
                lp, out_len, hidden = model.forward_with_hidden_states(x, torch.tensor([x.shape[1]], device=dev),
                                                                       layers)
            live = lp[:, 0].float().cpu().numpy()
            cached = split.read(p)
            for t in TEMPERATURES:
                kls[t].append(kl_per_frame(live, cached["log_probs"], t))
            agree += int((live.argmax(-1) == cached["log_probs"].argmax(-1)).sum())
            frames += live.shape[0]
            for L in layers:
                h = hidden[L][0].float().cpu().numpy()
                herr_num[L] += float(((h - cached["hidden"][L]) ** 2).sum())
                herr_den[L] += float((h ** 2).sum())
            hyps.append(vocab.decode(collapse_best_path(cached["best_path"]).tolist()))
            refs.append(vocab.decode(collapse_best_path(live.argmax(-1)).tolist()))
    out = {"frames_compared": frames, "top1_agreement": agree / max(frames, 1),
           "hidden_relative_sq_error": {L: herr_num[L] / max(herr_den[L], 1e-30) for L in layers}}
    for t in TEMPERATURES:
        allk = np.concatenate(kls[t]) if kls[t] else np.zeros(1)
        out[f"kl_T{t:g}_mean"] = float(allk.mean())
        out[f"kl_T{t:g}_max"] = float(allk.max())
    rates = error_rates(refs, hyps)
    out["greedy_wer_cached_vs_live"] = rates["wer"] if not math.isnan(rates["wer"]) else 0.0
    return out


def verify_cache(path: str, teacher: str | None = None, sample: int = 32, device: str = "auto",
                 storage_options: dict | None = None, log=print, corpus: str | None = None) -> dict:
    cache = TeacherCache(path, storage_options, require_complete=False, verify_reads=False)   # checked here
    res = {"path": path, "complete": bool(cache.meta.complete)}
    problems = []
    if not res["complete"]:
        problems.append("cache is incomplete (rerun the same dump-teacher command to finish it)")
    st = structural_check(cache, log)
    res["utterances_checked"] = st["utterances_checked"]
    problems += st["problems"]
    if res["complete"]:
        fields = [p for p, *_ in field_arrays(cache.lp_codec, cache.hidden_codecs)]
        sealed_problems, res["sealed"] = integrity.check(cache.root, cache.splits, fields)
        problems += sealed_problems
    if teacher is not None:
        trusted = res["complete"] and res.get("sealed") and not problems
        if corpus is None and not trusted:       # the metadata's corpus path is only followed under an intact seal
            raise OfflineKDError(f"{path}: the cache's metadata is not covered by an intact seal ("
                                 f"{'incomplete' if not res['complete'] else 'problems found' if problems else 'unsealed'}"
                                 f"), so its corpus path is not followed: give the corpus with --corpus")
        res["fidelity"] = fidelity(cache, teacher, sample, device, log, corpus)
    res["problems"] = problems
    res["ok"] = not problems
    return res


def format_verify(res: dict) -> str:
    lines = [f"cache {res['path']}: {'OK' if res['ok'] else 'PROBLEMS FOUND'} "
             f"({res['utterances_checked']} utterances checked, {'complete' if res['complete'] else 'incomplete'})"]
    lines += [f"  - {p}" for p in res["problems"][:50]]
    if res["complete"] and res.get("sealed") is False and integrity.MISSING_SEAL not in res["problems"]:
        lines.append("  note: a format-1 cache written before integrity seals: metadata and non-per-frame arrays "
                     "are not covered")
    f = res.get("fidelity")
    if f:
        lines.append(f"  fidelity on {f['frames_compared']} frames (live teacher vs cache):")
        for t in TEMPERATURES:
            lines.append(f"    KL T={t:g}: mean {f[f'kl_T{t:g}_mean']:.3e}  max {f[f'kl_T{t:g}_max']:.3e}")
        lines.append(f"    top-1 agreement {100 * f['top1_agreement']:.3f}%")
        for L, e in f["hidden_relative_sq_error"].items():
            lines.append(f"    hidden layer {L}: relative squared error {e:.3e}")
        lines.append(f"    greedy WER cached vs live {f['greedy_wer_cached_vs_live']:.2f}%")
    return "\n".join(lines)
