"""Every command on a CUDA GPU (#14 item 1). Skipped without one; on a GPU machine: `python -m pytest -m cuda`.

The same tiny corpus as the CPU tests. Offline == online on CUDA is checked within a tolerance, not bit for bit:
cuDNN's LSTM kernels may differ between the dump's batches and the training batches (a different batch composition,
hence a different padded length), so the cached targets equal the live ones to float32 rounding, not exactly."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from helpers import QUIET, dump_cfg, experiment_dict, student_dict
from offline_kd.cli import main
from offline_kd.commands import dump_teacher, train, train_student
from offline_kd.config import ExperimentConfig, build_dataclass

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (python -m pytest -m cuda)")]

CUDA_RTOL = 2e-3     # offline vs online on CUDA: per-step losses (float32 rounding through different batches)


@pytest.fixture(scope="module")
def cuda_teacher(tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("cuda_teacher")
    cfg = build_dataclass(ExperimentConfig, experiment_dict(tiny_corpus, out, hidden=32, layers=3, epochs=6,
                                                             batch_size=4, device="cuda"))
    train.run(cfg, **QUIET)
    return out / "checkpoint_last.pt"


def test_every_command_runs_on_cuda(cuda_teacher, tiny_corpus, tmp_path):
    out = tmp_path / "c.zarr"
    dump_teacher.run(dump_cfg(cuda_teacher, tiny_corpus, out, splits=["train", "untranscribed", "dev"],
                              device="cuda", codecs={"log_probs": "float16", "hidden": "float16"}), **QUIET)
    for device in ("cuda", "cuda:0"):
        d = student_dict(tiny_corpus, out, tmp_path / f"s-{device.replace(':', '')}", epochs=2,
                         untranscribed_splits=["untranscribed"])
        d["train"]["device"] = device
        train_student.run(build_dataclass(ExperimentConfig, d), **QUIET)
    runner = CliRunner()
    res = runner.invoke(main, ["cache", "verify", str(out), "--teacher", str(cuda_teacher), "--sample", "4"])
    assert res.exit_code == 0, res.output
    # the student evaluated on the GPU gives what the CPU gives for the same checkpoint: the same hypotheses but
    # where a frame's two best classes are within float32 rounding of each other (TF32 is off in evaluation), at
    # most one utterance in twenty, so the WER within the word errors those can make
    evals = {}
    for device in ("cuda", "cpu"):
        hyps = tmp_path / f"hyps-{device}.jsonl"
        res = runner.invoke(main, ["evaluate", "--checkpoint", str(tmp_path / "s-cuda" / "checkpoint_best.pt"),
                                   "--split", "dev", "--device", device, "--json", "--hypotheses", str(hyps)])
        assert res.exit_code == 0, res.output
        evals[device] = (json.loads(res.output.strip().splitlines()[-1]),
                         [json.loads(line) for line in hyps.read_text().splitlines()])
    (gpu, gpu_hyps), (cpu, cpu_hyps) = evals["cuda"], evals["cpu"]
    differ = [a for a, b in zip(gpu_hyps, cpu_hyps) if a["hypothesis"] != b["hypothesis"]]
    assert len(gpu_hyps) == len(cpu_hyps) == gpu["num_utterances"] and len(differ) <= len(gpu_hyps) // 20, differ
    words = sum(len(h["reference"].split()) for h in cpu_hyps)
    assert gpu["wer"] == pytest.approx(cpu["wer"], abs=100 * sum(len(h["reference"].split()) for h in differ)
                                       / words + 1e-9)


def test_offline_equals_online_on_cuda(cuda_teacher, tiny_corpus, tmp_path):
    out = tmp_path / "f32.zarr"
    dump_teacher.run(dump_cfg(cuda_teacher, tiny_corpus, out, splits=["train"], device="cuda"), **QUIET)
    runs = {}
    for name, online in (("off", None), ("on", str(cuda_teacher))):
        d = student_dict(tiny_corpus, out, tmp_path / name, epochs=2)
        d["train"]["device"] = "cuda"
        train_student.run(build_dataclass(ExperimentConfig, d), online_teacher=online, **QUIET)
        runs[name] = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
                      if json.loads(line)["event"] == "step"]
    assert len(runs["off"]) == len(runs["on"]) > 5
    for a, b in zip(runs["off"], runs["on"]):
        for k in ("train/soft", "train/ctc", "train/feature", "train/total"):
            assert a[k] == pytest.approx(b[k], rel=CUDA_RTOL, abs=1e-5), (a["step"], k)
    wa = torch.load(tmp_path / "off" / "checkpoint_last.pt", weights_only=False)["model_state_dict"]
    wb = torch.load(tmp_path / "on" / "checkpoint_last.pt", weights_only=False)["model_state_dict"]
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert np.isfinite(worst) and worst < 1e-2


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_on_cuda(cuda_teacher, tiny_corpus, tmp_path, precision):
    """dump.precision and train.precision on a GPU: the dump verifies, the baseline and a student from the cache
    train; fp16 keeps a gradient scaler whose state resumes with the run."""
    out = tmp_path / "c.zarr"
    dump_teacher.run(dump_cfg(cuda_teacher, tiny_corpus, out, splits=["train", "dev"], device="cuda",
                              precision=precision), **QUIET)
    res = CliRunner().invoke(main, ["cache", "verify", str(out), "--teacher", str(cuda_teacher), "--sample", "4"])
    assert res.exit_code == 0, res.output
    d = experiment_dict(tiny_corpus, tmp_path / "ctc", epochs=2, device="cuda")
    d["train"]["precision"] = precision
    train.run(build_dataclass(ExperimentConfig, d), **QUIET)
    s = student_dict(tiny_corpus, out, tmp_path / "student", epochs=1)
    s["train"].update(device="cuda", precision=precision)
    train_student.run(build_dataclass(ExperimentConfig, s), **QUIET)
    s["train"]["epochs"] = 2
    train_student.run(build_dataclass(ExperimentConfig, s), resume=True, **QUIET)
    ckpt = torch.load(tmp_path / "student" / "checkpoint_last.pt", weights_only=False)
    assert (ckpt["scaler"] is not None) == (precision == "fp16") and ckpt["epoch"] == 2


def test_compact_cache_decoded_on_the_gpu(cuda_teacher, tiny_corpus, tmp_path):
    """distill.decode_on auto decodes on the GPU there; the training matches decoding on the host (#14 item 4)."""
    from helpers import CODECS, step_records
    out = tmp_path / "compact.zarr"
    dump_teacher.run(dump_cfg(cuda_teacher, tiny_corpus, out, device="cuda",
                              codecs=CODECS["topk-lowrank+lowrank-step"]), **QUIET)
    runs = {}
    for where in ("auto", "host"):
        d = student_dict(tiny_corpus, out, tmp_path / where, epochs=2, decode_on=where)
        d["train"]["device"] = "cuda"
        lines = []
        train_student.run(build_dataclass(ExperimentConfig, d), log=lines.append)
        assert any(("decoded on cuda" if where == "auto" else "decoded on the host") in ln for ln in lines)
        runs[where] = step_records(tmp_path / where)
    for a, b in zip(runs["auto"], runs["host"]):
        assert a["train/total"] == pytest.approx(b["train/total"], rel=CUDA_RTOL)


def test_compact_dump_encoded_on_the_gpu(cuda_teacher, tiny_corpus, tmp_path):
    """dump.encode_on auto encodes on the GPU there; the cache verifies, and its targets match a host-encoded one's
    (#14 item 3)."""
    from helpers import CODECS
    from offline_kd.cache.reader import TeacherCache
    from offline_kd.distillation.fidelity import verify_with_teacher as verify_cache
    paths = {w: tmp_path / f"{w}.zarr" for w in ("auto", "host")}
    for where, path in paths.items():
        dump_teacher.run(dump_cfg(cuda_teacher, tiny_corpus, path, device="cuda", encode_on=where,
                                  codecs=CODECS["topk-lowrank+lowrank-step"]), **QUIET)
    res = verify_cache(str(paths["auto"]), teacher=str(cuda_teacher), sample=8, device="cuda", log=lambda *_: None)
    assert res["ok"], res
    a, b = TeacherCache(str(paths["auto"])).split("train"), TeacherCache(str(paths["host"])).split("train")
    for x, y in zip(a.read_range(0, len(a)), b.read_range(0, len(b))):
        np.testing.assert_allclose(np.exp(x["log_probs"]), np.exp(y["log_probs"]), atol=2e-3)
