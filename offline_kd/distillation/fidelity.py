"""The cache against a live teacher (`offline-kd cache verify --teacher`): a sample of utterances per split is
recomputed and compared with the decoded cache: KL(live || cached) at T = 1, 3, 4 (mean and max per frame), top-1
agreement, hidden-state relative squared error, and the greedy WER of cached vs live outputs."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

from offline_kd.cache.reader import TeacherCache
from offline_kd.cache.verify import TEMPERATURES, verify_cache
from offline_kd.data.corpus import Corpus
from offline_kd.data.targets import collapse_best_path
from offline_kd.data.views import corpus_reader
from offline_kd.data.vocab import Vocabulary
from offline_kd.decoding.metrics import error_rates
from offline_kd.errors import OfflineKDError, TeacherForwardError, arg
from offline_kd.data.dataset import utterance_batch
from offline_kd.models.interface import forward_batch
from offline_kd.models.numerics import exact_numerics, with_precision
from offline_kd.teachers.source import OPTIONS, load_teacher, parse_teacher
from offline_kd.runtime.loaders import resolve_device


def kl_per_frame(live: np.ndarray, cached: np.ndarray, temperature: float) -> np.ndarray:
    """KL(softmax(live/T) || softmax(cached/T)) per frame; inputs (F, V) log-probs."""
    p = torch.log_softmax(torch.from_numpy(live).double() / temperature, -1)
    q = torch.log_softmax(torch.from_numpy(cached).double() / temperature, -1)
    return (p.exp() * (p - q)).sum(-1).clamp_min(0).numpy()


def with_recorded_options(spec, cache: TeacherCache, tmp: str, log=print):
    """`--teacher` with the alignment options (vocabulary_map, hidden_pooling, max_length_mismatch) it leaves out
    taken from the cache's dump.teacher; a vocabulary_map file that is gone is written again (into `tmp`) from the
    mapping the cache records, pair for pair."""
    spec = parse_teacher(spec, arg("teacher"))
    try:
        recorded = parse_teacher(cache.meta.dump_config.get("teacher"), "the cache's dump.teacher")
    except OfflineKDError:
        return spec
    given = {} if isinstance(spec, str) else spec
    missing = {k: recorded[k] for k in OPTIONS if isinstance(recorded, dict) and k in recorded and k not in given}
    if not missing:
        return spec
    if "vocabulary_map" in missing and not Path(missing["vocabulary_map"]).is_file():
        pairs = ((cache.meta.teacher.get("alignment") or {}).get("vocabulary") or {}).get("pairs")
        if not pairs:
            raise OfflineKDError(f"{arg('teacher')}: the cache was dumped with vocabulary_map {missing['vocabulary_map']}, "
                                 f"which is gone, and records no mapping; give {arg('teacher')}'s vocabulary_map")
        path = Path(tmp) / "recorded_vocabulary_map.yaml"
        path.write_text(yaml.safe_dump({t: s for t, s in pairs}, allow_unicode=True))
        missing["vocabulary_map"] = str(path)
    log(f"{arg('teacher')}: using the {', '.join(missing)} the cache was dumped with")
    return {**({"checkpoint": spec} if isinstance(spec, str) else spec), **missing}


def _checked_teacher(cache: TeacherCache, teacher_path: str, dev, corpus, log):
    """The teacher, loaded as the dump loaded it (its recorded options), checked against the cache: the same
    alignment, the cached layers' widths."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = with_recorded_options(teacher_path, cache, tmp, log)
        teacher = load_teacher(spec, dev, Vocabulary.from_dict(cache.meta.vocab), where=arg("teacher"),
                               subsampling=cache.meta.subsampling, corpus=corpus)
    if teacher.record["sha256"] != cache.meta.teacher["sha256"]:
        log(f"warning: {teacher.name} is not the teacher the cache was made from (sha256 differs)")
    mine, cached = teacher.record.get("alignment") or {}, cache.meta.teacher.get("alignment") or {}
    if (mine.get("vocabulary") or {}).get("sha256") != (cached.get("vocabulary") or {}).get("sha256") \
            or mine.get("frames") != cached.get("frames"):
        raise OfflineKDError(f"{arg('teacher')} {teacher.name}: its alignment to the student (vocabulary mapping, frames) "
                             f"differs from the one {cache.path} was dumped with; give the same teacher options")
    dims = teacher.model.layer_dims()
    wrong = [L for L in cache.layers if dims.get(L) != cache.layer_dims[L]]
    if wrong:
        raise OfflineKDError(f"{arg('teacher')} {teacher.name}: layer {wrong[0]} is {dims.get(wrong[0])} wide, the cache's "
                             f"{cache.layer_dims[wrong[0]]}")
    return teacher


def _live(model, reader, u: str, waveform: bool, dev, layers):
    """The teacher's log-probs (T, V) and hidden states {L: (T, H)} on utterance `u`, recomputed exactly."""
    if u not in reader.index:
        raise OfflineKDError(f"utterance {u} of the cache is not in {reader.path}")
    batch = utterance_batch(reader, reader.index[u], waveform)
    try:
        with exact_numerics():
            lp, out_len, hidden = forward_batch(model, batch, dev, layers)
    except TeacherForwardError as exc:
        raise TeacherForwardError(f"{exc} on utterance {u}") from None
    return lp[:, 0].float().cpu().numpy(), {L: hidden[L][0].float().cpu().numpy() for L in layers}


@torch.no_grad()
def fidelity(cache: TeacherCache, teacher_path: str, sample: int, device: str, log=print,
             corpus_dir: str | None = None) -> dict:
    dev = resolve_device(device)
    corpus = Corpus(corpus_dir or cache.meta.corpus)
    teacher = _checked_teacher(cache, teacher_path, dev, corpus, log)
    vocab = teacher.vocab
    # the teacher recomputed in the precision the dump used (older caches: float32)
    model = with_precision(teacher.model, cache.meta.dump_config.get("precision", "fp32"), dev,
                           "the cache's dump.precision")
    layers = cache.layers
    kls = {t: [] for t in TEMPERATURES}
    agree, frames, herr_num, herr_den = 0, 0, {L: 0.0 for L in layers}, {L: 0.0 for L in layers}
    refs, hyps = [], []
    for s in cache.splits:
        split = cache.split(s)
        reader = corpus_reader(corpus, s, cache.meta.views)      # a view's split: the corpus seen through it
        positions = np.linspace(0, len(split) - 1, num=min(sample, len(split))).round().astype(int)
        for p in sorted(set(positions.tolist())):
            live, hidden = _live(model, reader, split.utterance_ids[p], teacher.input_kind == "waveform", dev, layers)
            cached = split.read(p)
            for t in TEMPERATURES:
                kls[t].append(kl_per_frame(live, cached["log_probs"], t))
            agree += int((live.argmax(-1) == cached["log_probs"].argmax(-1)).sum())
            frames += live.shape[0]
            for L in layers:
                herr_num[L] += float(((hidden[L] - cached["hidden"][L]) ** 2).sum())
                herr_den[L] += float((hidden[L] ** 2).sum())
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


def verify_with_teacher(path: str, teacher: str | None = None, sample: int = 32, device: str = "auto",
                        storage_options: dict | None = None, log=print, corpus: str | None = None) -> dict:
    """`verify_cache`, and with `teacher` the fidelity of a sample against it (`res["fidelity"]`). The corpus is
    the one the cache's metadata names only under an intact seal; otherwise `corpus` must be given."""
    res = verify_cache(path, storage_options, log)
    if teacher is not None:
        trusted = res["complete"] and res.get("sealed") and not res["problems"]
        if corpus is None and not trusted:       # the metadata's corpus path is only followed under an intact seal
            raise OfflineKDError(f"{path}: the cache's metadata is not covered by an intact seal ("
                                 f"{'incomplete' if not res['complete'] else 'problems found' if res['problems'] else 'unsealed'}"
                                 f"), so its corpus path is not followed: give the corpus with --corpus")
        if res["data_problems"]:    # its offsets or bytes are wrong: a comparison with the teacher reads garbage
            res["fidelity_skipped"] = (f"{res['data_problems']} problem(s) in the stored frames; the live teacher "
                                       f"is not compared")
            log(f"{path}: {res['fidelity_skipped']}")
            return res
        cache = TeacherCache(path, storage_options, require_complete=False, verify_reads=False)
        res["fidelity"] = fidelity(cache, teacher, sample, device, log, corpus)
    return res
