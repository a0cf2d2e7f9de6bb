"""torchrun with 2 CPU processes (gloo): sharded dump == single-process dump (also after a killed rank), and DDP
training == one process with gradient accumulation over the same global batches (also across --resume)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from helpers import assert_same_cache, dump_cfg, experiment_dict, QUIET, tiny_spec, write_yaml
from offline_kd.config import ExperimentConfig, ModelConfig, build_dataclass
from offline_kd.data.corpus import Corpus
from offline_kd.models.bilstm import BiLSTMCTC
from offline_kd.commands import dump_teacher, train, train_student
from offline_kd.models.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.slow   # end to end, several seconds each

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "offline_kd"]


def _env():
    return {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}


def torchrun(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(TORCHRUN + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          env=_env())


def _dump_yaml(path: Path, teacher, corpus, out, **kw) -> Path:
    cfg = {"teacher": str(teacher), "corpus": str(corpus), "output": str(out), "splits": ["train", "dev"],
           "layers": [1, 3], "batch_size": 8, "chunk_frames": 32, "shard_chunks": 2, "progress": False,
           "device": "cpu", "codecs": {"log_probs": "float16", "hidden": "float16"}, **kw}
    return write_yaml(path, {"dump": cfg})


def _one_thread(fn, *args) -> None:
    """Run a single-process reference with one thread, as torchrun gives each rank (OMP_NUM_THREADS=1): BLAS may
    round differently with another thread count (float16 storage can show it in a last bit, and Adam amplifies
    sign flips of near-zero gradients)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fn(*args, **QUIET)
    finally:
        torch.set_num_threads(threads)


def _single_process_dump(cfg) -> None:
    _one_thread(dump_teacher.run, cfg)


def test_two_rank_dump_equals_single_process(tiny_teacher, tiny_corpus, tmp_path):
    ref = tmp_path / "ref.zarr"
    _single_process_dump(dump_cfg(tiny_teacher, tiny_corpus, ref, codecs={"log_probs": "float16",
                                                                          "hidden": "float16"}))
    out = tmp_path / "dist.zarr"
    res = torchrun("dump-teacher", "--config", _dump_yaml(tmp_path / "d.yaml", tiny_teacher, tiny_corpus, out))
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(res.stdout.strip().splitlines()[-1])      # printed once, by rank 0
    assert result["world_size"] == 2 and len(res.stdout.strip().splitlines()) == 1
    assert int(zarr.open_group(str(out / "train"), mode="r").attrs["num_shards"]) > 4
    assert_same_cache(ref, out)


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _rank_of(pid: int) -> int | None:
    try:
        env = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [int(e.split(b"=", 1)[1]) for e in env if e.startswith(b"RANK=")]
    return ranks[0] if ranks else None


def test_killed_rank_then_rerun_equals_single_process(tmp_path):
    from offline_kd.data.synth import write_synth_corpus
    corpus = tmp_path / "corpus"
    write_synth_corpus(corpus, tiny_spec(num_train=400, num_dev=40, max_words=8), **QUIET)
    model = BiLSTMCTC(ModelConfig(input_dim=16, hidden_dim=160, num_layers=3, num_classes=9))
    teacher = tmp_path / "teacher.pt"
    save_checkpoint(teacher, {"model_config": asdict(model.config), "model_state_dict": model.state_dict(),
                              "vocab": Corpus(corpus).vocab.to_dict()})
    ref = tmp_path / "ref.zarr"
    _single_process_dump(dump_cfg(teacher, corpus, ref, codecs={"log_probs": "float16", "hidden": "float16"}))

    out = tmp_path / "killed.zarr"
    cfg = _dump_yaml(tmp_path / "d.yaml", teacher, corpus, out)
    proc = subprocess.Popen(TORCHRUN + ["dump-teacher", "--config", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=_env())
    killed = None
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and killed is None:
        try:
            done = int(zarr.open_array(str(out / "train/_progress/shard_done"), mode="r")[:].sum())
        except Exception:  # noqa: BLE001 - not created yet
            done = 0
        if done > 0:
            for pid in _children(proc.pid):
                if _rank_of(pid) == 1:
                    os.kill(pid, signal.SIGKILL)
                    killed = done
        time.sleep(0.01)
    rc = proc.wait(timeout=120)
    assert killed is not None, "the dump finished before a rank could be killed"
    assert rc != 0
    assert not zarr.open_group(str(out), mode="r").attrs["offline_kd"]["complete"]
    res = torchrun("dump-teacher", "--config", cfg)
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same_cache(ref, out)


def _state(path: Path) -> dict:
    return load_checkpoint(path)["model_state_dict"]


def test_ddp_train_follows_single_process_with_accumulation_and_resumes(tiny_corpus, tmp_path):
    # one process, batch 8 x accumulation 2  ==  two ranks, batch 8 each (12 batches per epoch: 6 steps either way);
    # both run one epoch, then --resume for a second
    ref = tmp_path / "single"
    for epochs, resume in ((1, False), (2, True)):
        cfg = build_dataclass(ExperimentConfig, experiment_dict(tiny_corpus, ref, epochs=epochs, accumulation_steps=2,
                                                                device="cpu"))
        _one_thread(lambda c, **kw: train.run(c, resume=resume, **kw), cfg)
    out = tmp_path / "ddp"
    y = write_yaml(tmp_path / "t.yaml", experiment_dict(tiny_corpus, out, epochs=2, device="cpu"))
    res = torchrun("train", "--config", y, "--set", "train.epochs=1")
    assert res.returncode == 0, res.stderr[-3000:]
    res = torchrun("train", "--config", y, "--resume")              # epoch 2, resumed by both ranks
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = _state(ref / "checkpoint_last.pt"), _state(out / "checkpoint_last.pt")
    assert load_checkpoint(out / "checkpoint_last.pt")["step"] == load_checkpoint(ref / "checkpoint_last.pt")["step"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum(1 for r in rows if r["event"] == "epoch") == 2                        # logged once, by rank 0


def test_ddp_train_student_matches_single_process_steps(tiny_teacher, tiny_corpus, tmp_path):
    cache = tmp_path / "cache.zarr"
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, cache), **QUIET)
    distill = {"cache": str(cache), "alpha": 0.5, "beta": 0.3, "gamma": 0.2, "temperature_schedule": [[1, 2.0]],
               "layer_mapping": {1: 1, 2: 3}}
    ref = tmp_path / "single"
    # constant LR: one process may have one more (short) step per epoch, which would stretch a cosine schedule
    # an even batch count, so both runs take the same optimizer steps (2 ranks drop an odd last batch; one
    # process would step on it) and must end at the same weights
    from offline_kd.data.sampler import SortedRunBatchSampler
    lengths = Corpus(tiny_corpus).split("train").lengths
    bs = next(b for b in range(5, 16) if len(SortedRunBatchSampler(lengths, np.arange(len(lengths)), b)) % 2 == 0)
    d = experiment_dict(tiny_corpus, ref, epochs=1, accumulation_steps=2, device="cpu", scheduler="constant",
                        batch_size=bs)
    _one_thread(train_student.run, build_dataclass(ExperimentConfig, {**d, "distill": distill}))
    out = tmp_path / "ddp"
    y = write_yaml(tmp_path / "s.yaml", {**experiment_dict(tiny_corpus, out, epochs=1, device="cpu",
                                                         scheduler="constant", batch_size=bs),
                                         "distill": distill})
    res = torchrun("train-student", "--config", y)
    assert res.returncode == 0, res.stderr[-3000:]

    def grad_norms(run):
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [r["train/grad_norm"] for r in rows if r["event"] == "step"]
    single, ddp = grad_norms(ref), grad_norms(out)
    assert len(ddp) >= 5 and len(ddp) == len(single)
    # the same global batches step by step, and the same student and projection heads at the end
    np.testing.assert_allclose(ddp, single, rtol=1e-4)
    a, b = load_checkpoint(ref / "checkpoint_last.pt"), load_checkpoint(out / "checkpoint_last.pt")
    for part in ("model_state_dict", "extra_state_dict"):
        assert a[part] and a[part].keys() == b[part].keys(), part
        for k in a[part]:
            torch.testing.assert_close(b[part][k], a[part][k], rtol=1e-4, atol=1e-5, msg=f"{part} {k}")
    assert (out / "checkpoint_best.pt").is_file()
