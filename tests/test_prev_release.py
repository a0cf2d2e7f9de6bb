"""Caches, configs and checkpoints written by the previous release still read, verify and train to the same weights
(issue #25: "no behaviour changes").

tests/fixtures/prev_release/ was written by release d04b025 with tests/fixtures/make_prev_release.py: a tiny corpus,
a teacher checkpoint (its numpy RNG state stored as an array, as checkpoints were then), a float16 cache and a
compact one (top-k log-probs with a low-rank tail, low-rank hidden states with a step quantiser), and
expected.json: what that release got from them. Here the current code must get the same: `cache info` and
`cache verify --teacher` (OK, sealed, the same fidelity figures), every utterance decoded to the same bytes,
`evaluate` of the teacher with the same hypotheses, and a 1-epoch student per cache with the same final weights
(sha256) and the same loss in every metrics.jsonl step. Everything runs with one torch thread, as the generator did.

Bit-for-bit holds on the CPU type the fixture was made on. On another x86 CPU type the compact cache's low-rank decode
(a float32 matmul whose kernel follows the CPU's vector units) differs in the last bits, in the old release as in
this one: other_cpu_reference.npz holds what release d04b025 itself decoded and trained from that cache on such a
CPU (an Intel Xeon of 2026-12), and where the bytes differ the figures must agree with it to float32 rounding.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from offline_kd.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "prev_release"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
CACHES = sorted(EXPECTED["caches"])
OTHER_CPU = dict(np.load(FIXTURE / "other_cpu_reference.npz"))   # the old release on a second CPU type (above)
ROUNDING = {"rel": 1e-5, "abs": 0.0}          # float32 rounding of a different summation order, not a change


@pytest.fixture(scope="module")
def prev(tmp_path_factory) -> Path:
    """A copy of the fixture (tests must not write into the repository)."""
    out = tmp_path_factory.mktemp("prev") / "prev_release"
    shutil.copytree(FIXTURE, out)
    return out


@pytest.fixture(autouse=True)
def one_thread(prev, monkeypatch):
    """One torch thread (as the generator had) and the fixture copy as working directory: its recorded paths
    (corpus, teacher.pt, caches/...) are relative to it."""
    before = torch.get_num_threads()
    torch.set_num_threads(EXPECTED["torch_threads"])
    monkeypatch.chdir(prev)
    yield
    torch.set_num_threads(before)


def cli(*args: str) -> str:
    res = CliRunner().invoke(main, list(args))
    assert res.exit_code == 0, f"offline-kd {' '.join(args)} exited {res.exit_code}: {res.output}"
    return res.stdout if hasattr(res, "stdout") else res.output


def json_out(*args: str) -> dict:
    """The command's JSON line (the last line of stdout: log lines go to stderr)."""
    return json.loads(cli(*args).strip().splitlines()[-1])


def state_sha256(state: dict) -> str:
    """As make_prev_release.py: for each key in sorted order, the key's bytes then the tensor's bytes."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def decoded_digest(split) -> str:
    """As make_prev_release.py: every utterance read one by one and decoded."""
    h = hashlib.sha256()

    def add(a) -> None:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    for p, u in enumerate(split.utterance_ids):
        d = split.read(p)
        h.update(str(u).encode())
        add(d["best_path"])
        add(d["log_probs"])
        for layer in sorted(d["hidden"]):
            h.update(str(layer).encode())
            add(d["hidden"][layer])
    return h.hexdigest()


def with_int_keys(cfg: dict) -> dict:
    """expected.json holds distill.layer_mapping with string keys (JSON); a config gives them as numbers."""
    cfg = json.loads(json.dumps(cfg))
    if "distill" in cfg:
        cfg["distill"]["layer_mapping"] = {int(k): v for k, v in cfg["distill"]["layer_mapping"].items()}
    return cfg


def test_fixture_is_from_the_previous_release():
    assert EXPECTED["release"]["commit"].startswith("d04b025")
    assert "d04b025" in (FIXTURE / "README.md").read_text()


def test_old_configs_build_unchanged():
    """The teacher, dump and student configs of the old release are accepted as they are (no key renamed)."""
    from offline_kd.config import DumpConfig, ExperimentConfig, build_dataclass
    build_dataclass(ExperimentConfig, with_int_keys({**EXPECTED["teacher_config"],
                                                     "train": {**EXPECTED["teacher_config"]["train"],
                                                               "output_dir": "runs/t"}}))
    for name in CACHES:
        build_dataclass(DumpConfig, EXPECTED["caches"][name]["dump_config"])
        build_dataclass(ExperimentConfig, with_int_keys(EXPECTED["caches"][name]["student_config"]))


@pytest.mark.parametrize("name", CACHES)
def test_cache_info_same(name):
    exp = EXPECTED["caches"][name]
    info = json_out("cache", "info", exp["path"], "--json")
    # every figure the old release reported, the same (new keys may be added); target_bytes_per_frame and
    # ratio_to_float32 sum per-field figures in the order zarr lists the arrays, which varies from run to run (in
    # the old release too): they may differ in the last bit
    for key, value in exp["info"].items():
        want = pytest.approx(value, rel=1e-12, abs=0) if isinstance(value, float) else value
        assert info.get(key) == want, f"cache info {key}: now {info.get(key)!r}, was {value!r}"
    assert info["complete"] is True


@pytest.mark.parametrize("name", CACHES)
def test_cache_verify_ok_and_same_fidelity(name):
    exp = EXPECTED["caches"][name]
    res = json_out("cache", "verify", exp["path"], "--teacher", "teacher.pt", "--corpus", "corpus",
                   "--sample", "32", "--device", "cpu", "--json")
    assert res["ok"] is True and res["complete"] is True and res["sealed"] is True, res
    assert res["problems"] == []
    assert res["utterances_checked"] == exp["verify"]["utterances_checked"]
    got, want = res["fidelity"], exp["verify"]["fidelity"]
    assert sorted(got) == sorted(want)
    for key, value in want.items():       # to float32 rounding: another CPU type rounds differently (see above)
        assert got[key] == (pytest.approx(value, **ROUNDING) if not isinstance(value, dict) else
                            {k: pytest.approx(v, **ROUNDING) for k, v in value.items()}), key
    assert "OK" in cli("cache", "verify", exp["path"])


@pytest.mark.parametrize("name", CACHES)
def test_cache_reads_every_utterance_the_same(name):
    from offline_kd.cache.reader import TeacherCache
    exp = EXPECTED["caches"][name]
    cache = TeacherCache(exp["path"])
    assert sorted(cache.splits) == sorted(exp["decoded"])
    for split_name, want in exp["decoded"].items():
        split = cache.split(split_name)
        assert (len(split), split.num_frames) == (want["utterances"], want["frames"])
        if decoded_digest(split) == want["sha256"]:
            continue
        # not the same bytes: what the old release decoded on the other CPU type, to float32 rounding
        assert name == "topk-lowrank+lowrank-step" and any(k.startswith(f"decoded/{split_name}/") for k in OTHER_CPU), \
            f"{name} {split_name}: decoded utterances differ"      # (the reference holds that cache only)
        for p, u in enumerate(split.utterance_ids):
            d = split.read(p)
            got = {"log_probs": d["log_probs"], **{f"hidden_{L}": h for L, h in d["hidden"].items()}}
            assert sorted(got) == sorted(k.split("/")[-1] for k in OTHER_CPU if k.startswith(f"decoded/{split_name}/{u}/"))
            for field, a in got.items():
                np.testing.assert_allclose(a, OTHER_CPU[f"decoded/{split_name}/{u}/{field}"], rtol=1e-5, atol=1e-6,
                                           err_msg=f"{split_name} {u} {field}")


@pytest.mark.parametrize("name", CACHES)
def test_student_trains_to_the_same_weights(name, tmp_path):
    from offline_kd.training.checkpoint import load_checkpoint
    exp = EXPECTED["caches"][name]
    cfg = with_int_keys(exp["student_config"])
    cfg["train"]["output_dir"] = str(tmp_path / "student")
    cfg_path = tmp_path / "student.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    cli("train-student", "--config", str(cfg_path))
    rows = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    steps = [{k: v for k, v in r.items() if k in ("epoch", "step") or k.startswith("train/")}
             for r in rows if r["event"] == "step"]
    epochs = [{k: v for k, v in r.items() if k in ("epoch", "step", "dev_wer", "dev_cer") or k.startswith("train_")}
              for r in rows if r["event"] == "epoch"]
    want = exp["student"]
    ckpt = load_checkpoint(tmp_path / "student" / "checkpoint_last.pt")
    exact = state_sha256(ckpt["model_state_dict"]) == want["weights_sha256"]
    # not the same bytes (another CPU type, see above): the old release's weights there, the losses to rounding
    same = (lambda a, b: a == b) if exact else (lambda a, b: a == pytest.approx(b, **ROUNDING))
    assert len(steps) == len(want["steps"])
    for got, was in zip(steps, want["steps"]):
        for key, value in was.items():
            assert same(got.get(key), value), f"step {was['step']} {key}: now {got.get(key)!r}, was {value!r}"
    for got, was in zip(epochs, want["epochs"]):
        for key, value in was.items():
            assert same(got.get(key), value), f"epoch {was['epoch']} {key}: now {got.get(key)!r}, was {value!r}"
    if not exact:
        assert any(k.startswith("student/") for k in OTHER_CPU) and name == "topk-lowrank+lowrank-step", \
            f"{name}: the student's weights differ"
        for k, v in ckpt["model_state_dict"].items():
            np.testing.assert_allclose(v.numpy(), OTHER_CPU[f"student/{k}"], rtol=1e-4, atol=1e-6, err_msg=k)


def test_old_teacher_checkpoint_loads_and_evaluates(tmp_path):
    from offline_kd.training.checkpoint import load_checkpoint, model_from_checkpoint
    ckpt = load_checkpoint("teacher.pt")
    assert isinstance(ckpt["rng"]["numpy"][1], np.ndarray)     # the old way: the numpy RNG state as an array
    model, vocab, _ = model_from_checkpoint("teacher.pt")
    assert sum(p.numel() for p in model.parameters()) == EXPECTED["teacher_evaluate_dev"]["num_parameters"]
    hyps = tmp_path / "hyps.jsonl"
    res = json_out("evaluate", "--checkpoint", "teacher.pt", "--split", "dev", "--corpus", "corpus",
                   "--device", "cpu", "--json", "--hypotheses", str(hyps))
    want = EXPECTED["teacher_evaluate_dev"]
    for key in ("num_utterances", "wer", "cer", "num_parameters"):
        assert res[key] == want[key], f"evaluate {key}: now {res[key]!r}, was {want[key]!r}"
    assert [json.loads(line)["hypothesis"] for line in hyps.read_text().splitlines()] == want["hypotheses"]
