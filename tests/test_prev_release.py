"""Caches, configs and checkpoints written by the previous release still read, verify and train to the same weights
(issue #25: "no behaviour changes").

tests/fixtures/prev_release/ was written by release d04b025 with tests/fixtures/make_prev_release.py: a tiny corpus,
a teacher checkpoint (its numpy RNG state stored as an array, as checkpoints were then), a float16 cache and a
compact one (top-k log-probs with a low-rank tail, low-rank hidden states with a step quantiser), and
expected.json: what that release got from them. Here the current code must get the same: `cache info` and
`cache verify --teacher` (OK, sealed, the same fidelity figures), every utterance decoded to the same bytes,
`evaluate` of the teacher with the same hypotheses, and a 1-epoch student per cache with the same final weights
(sha256) and the same loss in every metrics.jsonl step. Everything runs with one torch thread, as the generator did.

Bit-for-bit holds on the CPU type the fixture was made on. On another x86 CPU type float32 kernels follow the CPU's
vector units and differ in the last bits, in the old release as in this one (the compact cache's low-rank decode, the
live teacher's outputs that `cache verify` compares with, a student's training): a CPU reference holds what release
d04b025 itself got on such a CPU type (tests/fixtures/make_other_cpu_reference.py), and where the bytes or figures
differ from expected.json they must agree with one CPU type's reference to float32 rounding. cpu_reference_intel_xeon.npz:
an Intel Xeon of 2026-12, the compact cache's decode and student; cpu_reference_amd_epyc.npz: an AMD EPYC of 2026-12,
every cache's verify figures, decode and student.
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
ROUNDING = {"rel": 1e-5, "abs": 0.0}          # float32 rounding of a different summation order, not a change
# the old release on other CPU types (above): {cpu: {"<cache>/<verify|decoded|student>/...": array}}
CPU_REFS = {p.stem.removeprefix("cpu_reference_"): dict(np.load(p)) for p in sorted(FIXTURE.glob("cpu_reference_*.npz"))}


def cpu_refs(prefix: str) -> dict[str, dict]:
    """Each CPU reference's arrays under `prefix` (the prefix stripped), for the references that hold any."""
    out = {cpu: {k[len(prefix):]: v for k, v in ref.items() if k.startswith(prefix)} for cpu, ref in CPU_REFS.items()}
    return {cpu: arrs for cpu, arrs in out.items() if arrs}


def agrees_with_a_cpu_reference(prefix: str, check) -> None:
    """`check(arrays)` raises AssertionError unless the figures agree with that reference: one must pass."""
    refs = cpu_refs(prefix)
    assert refs, f"{prefix}: differs from expected.json and no CPU reference holds it"
    failed = {}
    for cpu, arrs in refs.items():
        try:
            check(arrs)
            return
        except AssertionError as exc:
            failed[cpu] = str(exc).splitlines()[0]
    raise AssertionError(f"{prefix}: differs from expected.json and from every CPU reference: {failed}")


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


def flat_figures(fidelity: dict) -> dict:
    """verify's fidelity figures with a dict's entries as figure/key (as the CPU references hold them)."""
    return {f"{k}/{kk}" if isinstance(v, dict) else k: vv for k, v in fidelity.items()
            for kk, vv in (v.items() if isinstance(v, dict) else [(None, v)])}


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
    flat = flat_figures(got)

    def same_as(ref: dict) -> None:       # to float32 rounding of a different summation order
        assert sorted(flat) == sorted(ref), sorted(set(flat) ^ set(ref))
        for key, value in ref.items():
            assert flat[key] == pytest.approx(float(value), **ROUNDING), f"{key}: now {flat[key]!r}, was {value!r}"
    try:
        same_as(flat_figures(want))
    except AssertionError:                # another CPU type's live teacher: its reference (see above)
        agrees_with_a_cpu_reference(f"{name}/verify/", same_as)
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
        # not the same bytes: what the old release decoded on another CPU type, to float32 rounding

        def same_as(ref: dict) -> None:
            for p, u in enumerate(split.utterance_ids):
                d = split.read(p)
                got = {"log_probs": d["log_probs"], **{f"hidden_{L}": h for L, h in d["hidden"].items()}}
                assert sorted(got) == sorted(k.split("/")[-1] for k in ref if k.startswith(f"{u}/")), u
                for field, a in got.items():
                    np.testing.assert_allclose(a, ref[f"{u}/{field}"], rtol=1e-5, atol=1e-6,
                                               err_msg=f"{split_name} {u} {field}")
        agrees_with_a_cpu_reference(f"{name}/decoded/{split_name}/", same_as)


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
    if not exact:                         # the old release's weights on another CPU type

        def same_as(ref: dict) -> None:
            assert sorted(ref) == sorted(ckpt["model_state_dict"])
            for k, v in ckpt["model_state_dict"].items():
                np.testing.assert_allclose(v.numpy(), ref[k], rtol=1e-4, atol=1e-6, err_msg=k)
        agrees_with_a_cpu_reference(f"{name}/student/", same_as)


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
