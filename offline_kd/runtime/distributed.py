"""PyTorch's own distributed engine, as torchrun sets it up: rank, world size and local rank come from the
environment (RANK, WORLD_SIZE, LOCAL_RANK); the process group uses NCCL on GPUs and gloo on CPUs. Without torchrun
everything here is a no-op for a single process (rank 0 of 1)."""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from offline_kd.errors import OfflineKDError
from offline_kd.runtime.loaders import resolve_device


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_from_os() -> DistEnv:
    try:
        return DistEnv(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                       int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise OfflineKDError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (set by torchrun)") from None


def select_device(name: str, env: DistEnv, cuda_available: bool, device_count: int) -> torch.device:
    """The device for this process, always with an index on CUDA (torch.cuda.set_device refuses a bare "cuda"):
    `auto`/`cuda` -> cuda:LOCAL_RANK under torchrun (modulo the visible GPUs), cuda:0 for a single process;
    `cuda:N` as given (checked against the visible GPUs); `cpu`, or `auto` without CUDA, -> cpu. Pure, so the
    selection is tested on machines without a GPU."""
    if name == "auto":
        name = "cuda" if cuda_available else "cpu"
    if name.startswith("cuda"):
        if not cuda_available or device_count < 1:
            raise OfflineKDError(f"device '{name}' requested but CUDA is not available")
        try:
            device = torch.device(name)
        except RuntimeError:
            raise OfflineKDError(f"unknown device '{name}'") from None
        if device.index is None:
            return torch.device("cuda", env.local_rank % device_count if env.enabled else 0)
        if device.index >= device_count:
            raise OfflineKDError(f"device '{name}': only {device_count} GPU(s) visible (cuda:0..cuda:{device_count - 1})")
        return device
    return resolve_device(name)


def setup(device_name: str, timeout_s: float = 6 * 3600) -> tuple[DistEnv, torch.device]:
    """Join the process group if launched by torchrun; the device is cuda:LOCAL_RANK for `auto`/`cuda` on GPUs."""
    env = env_from_os()
    available = torch.cuda.is_available()
    device = select_device(device_name, env, available, torch.cuda.device_count() if available else 0)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if env.enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                timeout=_dt.timedelta(seconds=timeout_s))
    return env, device


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def broadcast(obj, env: DistEnv):
    """rank 0's `obj` on every rank."""
    if not env.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(obj, env: DistEnv) -> list:
    if not env.enabled:
        return [obj]
    out = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def run_on_main(fn, env: DistEnv):
    """Run fn() on rank 0 only and give its result to every rank; an OfflineKDError there is raised on all ranks
    (so a user mistake found by rank 0 stops every rank with the same message instead of a hang)."""
    result, error = None, None
    if env.is_main:
        try:
            result = fn()
        except OfflineKDError as exc:
            error = str(exc)
    result, error = broadcast((result, error), env)
    if error is not None:
        raise OfflineKDError(error)
    return result


def run_then_shutdown(fn):
    """fn() under the process group set up by `setup`, then `shutdown`: waiting for the other ranks after a normal
    end, not after an error."""
    try:
        result = fn()
    except BaseException:
        shutdown(ok=False)
        raise
    shutdown()
    return result


def shutdown(ok: bool = True) -> None:
    """Tear the process group down. After a run that ended normally every rank first waits for the others: a rank
    that destroys its gloo group while a peer still has collectives in flight with it aborts ("terminate called
    without an active exception", seen under load in tests/test_distributed.py). After an error no rank waits (the
    others may never arrive)."""
    if dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()
