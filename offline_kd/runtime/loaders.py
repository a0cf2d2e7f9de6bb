"""Batched inference over a split: shared by evaluation, dump-teacher and cache verification."""

from __future__ import annotations

import os
import time
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from offline_kd.data.corpus import SplitReader
from offline_kd.data.dataset import SpeechDataset, collate
from offline_kd.data.sampler import make_batches
from offline_kd.data.vocab import Vocabulary
from offline_kd.decoding.greedy import greedy_ids
from offline_kd.decoding.metrics import error_rates
from offline_kd.errors import OfflineKDError, TeacherForwardError
from offline_kd.models.interface import forward_batch, reads_waveform
from offline_kd.models.numerics import exact_numerics


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise OfflineKDError(f"device '{name}' requested but CUDA is not available")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise OfflineKDError(f"unknown device '{name}'") from None
    if dev.type != "cpu":
        try:                        # a device type this torch knows but cannot use here (mps on Linux, xpu, ...)
            torch.empty(0, device=dev)
        except (RuntimeError, AssertionError) as exc:
            raise OfflineKDError(f"device '{name}' is not usable here ({' '.join(str(exc).split())[:160]})") \
                from None
    return dev


def sorted_batches(reader: SplitReader, indices: np.ndarray, batch_size: Optional[int],
                   max_frames: Optional[int]) -> list[list[int]]:
    """Deterministic batches of length-sorted utterances (longest first, ties by position): the dump plan."""
    order = np.argsort(-reader.lengths[indices], kind="stable")
    return make_batches(reader.lengths, indices, batch_size, max_frames, order)


def worker_context():
    """DataLoader workers are spawned, not forked: zarr-python runs an asyncio event loop in a background thread,
    and a forked child inherits the loop's state without its thread (reads would hang)."""
    import multiprocessing
    return multiprocessing.get_context("spawn")


def resolve_num_workers(value, device: torch.device, world_size: int = 1, cpu_count: Optional[int] = None) -> int:
    """`data.num_workers`: an integer as given; auto: 0 on a CPU, else min(6, this process's share of the cores
    - 1), at least 1 (the measurement behind the 6: docs/usage.md, GPU numerics)."""
    if value != "auto":
        return int(value)
    if device.type != "cuda":
        return 0
    cores = cpu_count if cpu_count is not None else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else (os.cpu_count() or 1)
    return max(1, min(6, cores // max(1, world_size) - 1))


def loader_for(reader: SplitReader, vocab: Vocabulary, batches: list[list[int]], num_workers: int = 0,
               device: Optional[torch.device] = None, with_audio: bool = False):
    """Batches of features (and with `with_audio` their samples) in the given order. On CUDA they are pinned, so the copy to the device overlaps the
    previous forward pass (`non_blocking` in `iterate_outputs`); workers, if any, are spawned."""
    return DataLoader(SpeechDataset(reader, vocab, with_audio), batch_sampler=batches, collate_fn=collate,
                      num_workers=num_workers, pin_memory=device is not None and device.type == "cuda",
                      multiprocessing_context=worker_context() if num_workers else None,
                      prefetch_factor=4 if num_workers else None)




@torch.no_grad()
def iterate_outputs(model, loader, device: torch.device, layers=None, ids=None) -> Iterator[tuple]:
    """Yield (batch, log_probs (T', B, V), output_lengths (B,), hidden {layer: (B, T', H)}) in eval mode. `ids`
    (the reader's utterance ids): a teacher whose own forward fails is named with the batch's first utterance."""
    model.eval()
    for batch in loader:
        try:
            with exact_numerics():   # TF32 off: the dump and an online teacher compute the same function (and
                # dev evaluation is deterministic)
                log_probs, out_len, hidden = forward_batch(model, batch, device, layers)
        except TeacherForwardError as exc:
            if ids is None:
                raise
            raise TeacherForwardError(f"{exc} on the batch starting with utterance "
                                      f"{ids[int(batch['indices'][0])]}") from None
        yield batch, log_probs, out_len, hidden


def evaluate_greedy(model, reader: SplitReader, indices: np.ndarray, vocab: Vocabulary, device: torch.device,
                    batch_size: int = 32, num_workers: int = 0, keep_log_probs: bool = False) -> dict:
    """Greedy WER/CER on a split. Returns rates, counts, decoding throughput and (optionally) per-utterance log-probs."""
    reader.require_transcripts("WER evaluation")
    batches = sorted_batches(reader, indices, batch_size, None)
    refs, hyps, ids, all_lp = [], [], [], []
    frames = 0
    start = time.perf_counter()
    for batch, log_probs, out_len, _ in iterate_outputs(
            model, loader_for(reader, vocab, batches, num_workers, with_audio=reads_waveform(model)), device):
        for b, seq in enumerate(greedy_ids(log_probs, out_len)):
            i = batch["indices"][b]
            refs.append(reader.transcripts[i])
            hyps.append(vocab.decode(seq))
            ids.append(reader.utterance_ids[i])
            if keep_log_probs:
                all_lp.append(log_probs[: out_len[b], b].float().cpu().numpy())
        frames += int(batch["feature_lengths"].sum())
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    out = error_rates(refs, hyps)
    out.update({"num_utterances": len(refs), "frames": frames, "seconds": elapsed,
                "frames_per_second": frames / max(elapsed, 1e-9), "utterance_ids": ids,
                "references": refs, "hypotheses": hyps})
    if keep_log_probs:
        out["log_probs"] = all_lp
    return out


@torch.no_grad()
def decode_speed(model, reader: SplitReader, indices: np.ndarray, vocab: Vocabulary, device: torch.device,
                 batch_size: int = 32, repeats: int = 5, max_frames: int = 20000) -> dict:
    """Greedy decoding speed measured in isolation: the first batches of the split (up to `max_frames` input
    frames) are read into memory once, decoded once to warm up, then decoded `repeats` times; the figure is the
    median input frames/s of those passes (model forward + greedy collapse, no I/O). Comparable between models
    when measured one after another with the same batch size, thread count and device."""
    model.eval()
    batches, frames = [], 0
    for b in sorted_batches(reader, indices, batch_size, None):
        batches.append(b)
        frames += int(reader.lengths[b].sum())
        if frames >= max_frames:
            break
    data = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            for batch in loader_for(reader, vocab, batches, with_audio=reads_waveform(model))]

    def one_pass() -> float:
        start = time.perf_counter()
        for batch in data:
            log_probs, out_len, _ = forward_batch(model, batch, device)
            greedy_ids(log_probs, out_len)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return frames / max(time.perf_counter() - start, 1e-9)

    one_pass()                                          # warm-up: allocator, kernels, caches
    passes = [one_pass() for _ in range(max(1, repeats))]
    return {"frames_per_second": float(np.median(passes)), "passes": [round(p, 1) for p in passes],
            "frames": frames, "batch_size": batch_size, "repeats": len(passes), "threads": torch.get_num_threads(),
            "device": str(device)}
