"""#14 items 2 and 5: exact numerics for the teacher's forward pass, mixed precision for training."""

import pytest
import torch

from helpers import QUIET, experiment_dict
from offline_kd.commands import train
from offline_kd.config import ExperimentConfig, build_dataclass
from offline_kd.errors import OfflineKDError
from offline_kd.models.bilstm import BiLSTMCTC
from offline_kd.config import ModelConfig
from offline_kd.models.numerics import AutocastModel, exact_numerics, with_precision
from offline_kd.training.trainer import check_resume_config


def test_exact_numerics_turns_tf32_off_and_restores_the_flags():
    cuda, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = (cuda.allow_tf32, cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark)
    cuda.allow_tf32, cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark = True, True, False, True
    try:
        with exact_numerics():
            assert (cuda.allow_tf32, cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark) == (False, False, True, False)
        assert (cuda.allow_tf32, cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark) == (True, True, False, True)
        with pytest.raises(RuntimeError):
            with exact_numerics():
                raise RuntimeError("boom")
        assert cuda.allow_tf32 and cudnn.benchmark
    finally:
        cuda.allow_tf32, cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark = before


def test_bf16_forward_runs_in_bf16_and_returns_float32():
    torch.manual_seed(0)
    model = BiLSTMCTC(ModelConfig(input_dim=16, hidden_dim=24, num_layers=2, num_classes=9, dropout=0.0)).eval()
    x, lengths = torch.randn(2, 20, 16), torch.tensor([20, 14])
    wrapped = with_precision(model, "bf16", torch.device("cpu"))
    assert isinstance(wrapped, AutocastModel) and with_precision(model, "fp32", torch.device("cpu")) is model
    with torch.no_grad():
        lp32, n32, h32 = model.forward_with_hidden_states(x, lengths, [1, 2])
        lp16, n16, h16 = wrapped.forward_with_hidden_states(x, lengths, [1, 2])
        lp16b, _ = wrapped(x, lengths)
    assert lp16.dtype == torch.float32 and all(h.dtype == torch.float32 for h in h16.values())
    assert torch.equal(n32, n16) and torch.equal(lp16, lp16b)
    diff = (lp16 - lp32).abs().max().item()
    assert 0 < diff < 0.2          # bf16 arithmetic happened (not bit-equal), and it is close
    assert wrapped.config is model.config


def test_bf16_training_on_cpu(tiny_corpus, tmp_path):
    d = experiment_dict(tiny_corpus, tmp_path / "run", epochs=2)
    d["train"]["precision"] = "bf16"
    result = train.run(build_dataclass(ExperimentConfig, d), **QUIET)
    assert result["best_dev_wer"] <= 100.0 and (tmp_path / "run" / "checkpoint_last.pt").is_file()


def test_fp16_needs_cuda_and_bad_names_are_refused(tiny_corpus, tmp_path):
    d = experiment_dict(tiny_corpus, tmp_path / "run", epochs=1)
    d["train"]["precision"] = "fp8"
    with pytest.raises(OfflineKDError, match="train.precision must be one of fp32, bf16, fp16, got 'fp8'"):
        build_dataclass(ExperimentConfig, d)
    d["train"].update(precision="fp16", device="cpu")
    with pytest.raises(OfflineKDError, match="train.precision fp16 needs a CUDA device"):
        train.run(build_dataclass(ExperimentConfig, d), **QUIET)
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_from_before_a_new_key_resumes_at_its_default(tmp_path):
    now = {"train": {"lr": 0.01, "precision": "fp32"}}
    check_resume_config({"train": {"lr": 0.01}}, now, tmp_path)            # the key is newer than the run
    with pytest.raises(OfflineKDError, match="train.precision: 'fp32' -> 'bf16'"):
        check_resume_config({"train": {"lr": 0.01}}, {"train": {"lr": 0.01, "precision": "bf16"}}, tmp_path)


def test_bf16_student_from_the_cache_and_online_teacher_stays_float32(f32_cache, tiny_corpus, tmp_path):
    """The student's forward pass in bf16; the cached targets (float32) and the loss terms are unchanged."""
    from helpers import student_dict
    from offline_kd.commands import train_student
    d = student_dict(tiny_corpus, f32_cache, tmp_path / "run", epochs=1)
    d["train"]["precision"] = "bf16"
    train_student.run(build_dataclass(ExperimentConfig, d), **QUIET)
    ckpt = torch.load(tmp_path / "run" / "checkpoint_last.pt", weights_only=False)
    assert ckpt["config"]["train"]["precision"] == "bf16"
    assert all(v.dtype == torch.float32 for v in ckpt["model_state_dict"].values() if v.is_floating_point())


def test_auto_workers_none_on_cpu_some_per_gpu_process():
    from offline_kd.training.trainer import resolve_num_workers
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_num_workers("auto", cpu, cpu_count=64) == 0
    assert resolve_num_workers("auto", gpu, cpu_count=16) == 6
    assert resolve_num_workers("auto", gpu, world_size=8, cpu_count=16) == 1
    assert resolve_num_workers("auto", gpu, world_size=4, cpu_count=16) == 3
    assert resolve_num_workers("auto", gpu, cpu_count=1) == 1
    assert resolve_num_workers(3, cpu) == 3


@pytest.mark.parametrize("value", ["many", -1])
def test_bad_num_workers_is_refused_by_name(tiny_corpus, tmp_path, value):
    d = experiment_dict(tiny_corpus, tmp_path / "run")
    d["data"]["num_workers"] = value
    with pytest.raises(OfflineKDError, match=f"data.num_workers must be auto or an integer >= 0, got {value!r}"):
        build_dataclass(ExperimentConfig, d)


def test_precision_names_devices_and_scaler_choice():
    """The pieces `train.precision` is made of, on device objects (no GPU needed to construct them)."""
    import warnings
    from offline_kd.models.numerics import check_precision, grad_scaler
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert check_precision("fp32", cpu) is None and check_precision("bf16", cpu) is torch.bfloat16
    assert check_precision("fp16", gpu) is torch.float16 and check_precision("bf16", gpu) is torch.bfloat16
    with pytest.raises(OfflineKDError, match=r"^dump.precision must be one of fp32, bf16, fp16, got 'half'$"):
        check_precision("half", cpu, key="dump.precision")
    model = BiLSTMCTC(ModelConfig(input_dim=4, hidden_dim=4, num_layers=1, num_classes=3))
    for name, device, dtype in (("bf16", cpu, torch.bfloat16), ("fp16", gpu, torch.float16), ("bf16", gpu, torch.bfloat16)):
        wrapped = with_precision(model, name, device)
        assert wrapped.dtype is dtype and wrapped.device_type == device.type
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")      # a CUDA autocast without CUDA warns that it is disabled
            assert wrapped._autocast().fast_dtype is dtype
    assert AutocastModel(model, torch.float16, "cpu")._autocast().fast_dtype is torch.float16
    assert grad_scaler("bf16", gpu) is None and grad_scaler("fp16", cpu) is None and grad_scaler("fp32", gpu) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # constructing a CUDA scaler without CUDA warns that it is disabled
        scaler = grad_scaler("fp16", gpu)
    assert isinstance(scaler, torch.amp.GradScaler) and scaler._device == "cuda"


def test_bf16_dump_records_its_precision_and_verifies_in_it(tiny_teacher, tiny_corpus, tmp_path, f32_cache,
                                                            monkeypatch):
    """dump.precision bf16: the teacher's forward under autocast, the precision in the cache (info, identity),
    `cache verify --teacher` recomputing in it; targets close to the float32 dump's; fp16 on a CPU refused."""
    import numpy as np
    from helpers import dump_cfg
    from offline_kd.cache.info import cache_info, format_info
    from offline_kd.cache.reader import TeacherCache
    from offline_kd.distillation.fidelity import fidelity
    from offline_kd.commands import dump_teacher
    out = tmp_path / "bf16.zarr"
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, out, splits=["train"], precision="bf16"), **QUIET)
    info = cache_info(str(out))
    assert info["teacher_precision"] == "bf16" and "teacher forward bf16 on cpu" in format_info(info)
    assert cache_info(str(f32_cache))["teacher_precision"] == "fp32"
    a, b = TeacherCache(str(out)), TeacherCache(str(f32_cache))
    assert a.meta.identity_sha256 != b.meta.identity_sha256
    x, y = a.split("train").read(0), b.split("train").read(0)
    assert x["log_probs"].shape == y["log_probs"].shape and not np.array_equal(x["log_probs"], y["log_probs"])
    assert np.abs(np.exp(x["log_probs"]) - np.exp(y["log_probs"])).max() < 0.1
    import offline_kd.distillation.fidelity as verify
    asked = []
    monkeypatch.setattr(verify, "with_precision", lambda m, p, *a: asked.append(p) or with_precision(m, p, *a))
    fid = fidelity(a, str(tiny_teacher), sample=4, device="cpu", log=lambda *_: None)
    fidelity(b, str(tiny_teacher), sample=1, device="cpu", log=lambda *_: None)
    # recomputed in the cache's precision (on a CPU, bf16 batch-of-one and batched outputs differ by ~1e-5 in KL)
    assert asked == ["bf16", "fp32"] and fid["top1_agreement"] == 1.0 and fid["kl_T1_max"] < 1e-3, fid
    with pytest.raises(OfflineKDError, match="dump.precision fp16 needs a CUDA device"):
        dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, tmp_path / "fp16.zarr", precision="fp16", device="cpu"),
                         **QUIET)
    assert not (tmp_path / "fp16.zarr").exists()


def test_a_dump_with_feature_workers_equals_one_without(tiny_teacher, tiny_corpus, tmp_path):
    """dump.num_workers: spawned processes read the features; the cache is the same, array for array."""
    from helpers import assert_same_cache, dump_cfg
    from offline_kd.commands import dump_teacher
    out = tmp_path / "w2.zarr"
    for path, workers in ((tmp_path / "w0.zarr", 0), (out, 2)):
        dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, path, num_workers=workers), **QUIET)
    assert_same_cache(tmp_path / "w0.zarr", out)
    with pytest.raises(OfflineKDError, match="dump.num_workers must be auto or an integer >= 0, got 'all'"):
        dump_cfg(tiny_teacher, tiny_corpus, out, num_workers="all")


def test_the_dump_precision_enters_a_cache_identity_only_when_not_fp32(f32_cache):
    """Caches written before dump.precision existed keep their identity (a rerun still resumes them)."""
    import dataclasses
    from offline_kd.cache.reader import TeacherCache
    meta = TeacherCache(str(f32_cache)).meta
    old = dataclasses.replace(meta, dump_config={k: v for k, v in meta.dump_config.items() if k != "precision"})
    assert meta.dump_config["precision"] == "fp32" and old.identity({}) == meta.identity({})
    bf16 = dataclasses.replace(meta, dump_config={**meta.dump_config, "precision": "bf16"})
    assert bf16.identity({}) != meta.identity({})


def test_every_teacher_forward_pass_runs_in_exact_numerics(tiny_teacher, tiny_corpus, f32_cache, tmp_path,
                                                          monkeypatch):
    """The dump, `cache verify --teacher` and the online teacher each enter `exact_numerics` around the teacher's
    forward pass (on a CPU the flags change nothing, so this is checked by counting, not by numbers)."""
    import contextlib
    from helpers import dump_cfg, student_dict
    import offline_kd.distillation.fidelity as verify
    import offline_kd.losses.modules as modules
    import offline_kd.runtime.loaders as inference
    from offline_kd.cache.reader import TeacherCache
    from offline_kd.commands import dump_teacher, train_student
    entered = {"dump": 0, "verify": 0, "online": 0}

    def counting(name):
        @contextlib.contextmanager
        def cm():
            entered[name] += 1
            with exact_numerics():
                yield
        return cm

    monkeypatch.setattr(inference, "exact_numerics", counting("dump"))
    monkeypatch.setattr(verify, "exact_numerics", counting("verify"))
    monkeypatch.setattr(modules, "exact_numerics", counting("online"))
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, tmp_path / "c.zarr", splits=["train"]), **QUIET)
    verify.fidelity(TeacherCache(str(f32_cache)), str(tiny_teacher), sample=2, device="cpu", log=lambda *_: None)
    d = student_dict(tiny_corpus, f32_cache, tmp_path / "online", epochs=1)
    before = entered["dump"]           # dev evaluation of the student goes through inference too
    train_student.run(build_dataclass(ExperimentConfig, d), online_teacher=str(tiny_teacher), **QUIET)
    assert before > 0 and entered["verify"] == 2 and entered["online"] > 0, entered
