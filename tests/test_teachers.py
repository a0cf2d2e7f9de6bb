"""Teachers from an entry point (a model in the user's own code): the example under examples/own_teacher dumps the
same cache bit for bit as the native checkpoint with the same weights, verifies against the cache, distils online,
and every wrong teacher is a one-line error with nothing written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from helpers import QUIET, assert_same_cache, dump_cfg, student_dict, write_yaml
from offline_kd.cache.reader import TeacherCache
from offline_kd.cli import main
from offline_kd.commands import dump_teacher
from offline_kd.teachers.source import parse_teacher
from offline_kd.errors import OfflineKDError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "own_teacher"


@pytest.fixture()
def own_teacher(tiny_teacher, tmp_path, monkeypatch):
    """The example's entry point with the tiny teacher's weights (converted to the example's own names)."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_teacher
    args = my_teacher.from_offline_kd(str(tiny_teacher), str(tmp_path / "own"))
    return {"entry_point": "my_teacher:load", "args": args}


def test_entry_point_cache_equals_the_native_cache_bit_for_bit(tiny_teacher, tiny_corpus, own_teacher, tmp_path):
    native, own = tmp_path / "native.zarr", tmp_path / "own.zarr"
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, native), **QUIET)
    dump_teacher.run(dump_cfg(own_teacher, tiny_corpus, own), **QUIET)
    assert_same_cache(native, own)
    meta = TeacherCache(str(own)).meta
    assert meta.teacher["adapter"] == "entry_point" and meta.teacher["entry_point"] == "my_teacher:load"
    assert meta.teacher["path"] == "entry_point:my_teacher:load" and meta.teacher["args"] == own_teacher["args"]
    # the same weights under the example's own names: another weights hash, so another resume identity
    assert meta.identity_sha256 != TeacherCache(str(native)).meta.identity_sha256
    info = CliRunner().invoke(main, ["cache", "info", str(own)])
    assert info.exit_code == 0 and "teacher: entry point my_teacher:load" in info.output, info.output


def test_entry_point_teacher_verifies_and_distils_online(tiny_corpus, own_teacher, tmp_path):
    out = tmp_path / "own.zarr"
    dump_teacher.run(dump_cfg(own_teacher, tiny_corpus, out), **QUIET)
    inline = json.dumps(own_teacher)                  # JSON is YAML: the inline form of the command line
    res = CliRunner().invoke(main, ["cache", "verify", str(out), "--teacher", inline, "--sample", "4", "--json"])
    assert res.exit_code == 0, res.output
    fid = json.loads(res.output)["fidelity"]
    assert fid["kl_T1_max"] < 1e-9 and fid["top1_agreement"] == 1.0
    cfg = write_yaml(tmp_path / "s.yaml", student_dict(tiny_corpus, out, tmp_path / "run", epochs=1))
    res = CliRunner().invoke(main, ["train-student", "--config", str(cfg), "--online-teacher", inline])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "checkpoint_best.pt").is_file()


def test_verify_with_the_teacher_on_a_damaged_cache_reports_no_traceback(tiny_corpus, own_teacher, tmp_path):
    """One offset chunk deleted: the structural check reports it, the live teacher is not compared (it would read
    garbage: a tensor size mismatch traceback before), one exit code."""
    import shutil
    out = tmp_path / "c.zarr"
    dump_teacher.run(dump_cfg(own_teacher, tiny_corpus, out), **QUIET)
    shutil.rmtree(out / "train" / "offset" / "c")
    res = CliRunner().invoke(main, ["cache", "verify", str(out), "--teacher", json.dumps(own_teacher), "--corpus",
                                    str(tiny_corpus), "--sample", "4"])
    assert res.exit_code != 0 and res.exception is None or isinstance(res.exception, SystemExit), res.output
    assert "Traceback" not in res.output and "the live teacher is not compared" in res.output, res.output


def test_a_device_torch_knows_but_cannot_use_is_a_one_line_error():
    from offline_kd.runtime.loaders import resolve_device
    if torch.backends.mps.is_available():
        pytest.skip("this machine has mps")
    with pytest.raises(OfflineKDError, match="device 'mps' is not usable here"):
        resolve_device("mps")


class _Bad(torch.nn.Module):
    """A teacher that breaks one rule at a time."""

    def __init__(self, rule: str):
        super().__init__()
        self.rule = rule
        self.lin = torch.nn.Linear(16, 9)
        with torch.no_grad():                                  # the same weights at every load (its identity)
            g = torch.Generator().manual_seed(0)
            self.lin.weight.copy_(torch.randn(9, 16, generator=g) * 0.25)
            self.lin.bias.zero_()
        self.tokens = ["<blank>", "|"] + [f"w{i}" for i in range(7)]
        self.blank, self.input_dim, self.subsampling = 0, 16, 2

    def layer_dims(self):
        return {1: 9}

    def forward_with_hidden_states(self, x, lengths, layers=None):
        self.calls = getattr(self, "calls", 0) + 1
        if os.environ.get("BAD_TEACHER_FAIL_AT") == str(self.calls):     # (rule "ok": the same teacher identity)
            raise RuntimeError("CUDA out of memory (simulated)")
        y = self.lin(x[:, ::2])
        lp = y.log_softmax(-1).transpose(0, 1)
        out_len = (lengths + 1) // 2
        if self.rule == "shape":
            lp = lp[:, :, :5]
        if self.rule == "nan":
            lp = lp * float("nan")
        if self.rule == "lengths":
            out_len = lengths
        return lp, out_len, {L: y for L in (layers or [])}


def _bad_module(tmp_path, monkeypatch, rule: str, corpus) -> dict:
    from offline_kd.data.corpus import Corpus
    tokens = list(Corpus(corpus).vocab.tokens)
    (tmp_path / "bad_teacher.py").write_text(
        "import sys\nsys.path.insert(0, %r)\nfrom test_teachers import _Bad\n\n"
        "def load(rule, tokens):\n    t = _Bad(rule)\n    t.tokens = tokens\n    return t\n\n"
        "def lacking():\n    return object()\n\n"
        "def raises():\n    raise RuntimeError('no GPU here')\n" % str(Path(__file__).parent))
    monkeypatch.syspath_prepend(str(tmp_path))
    return {"entry_point": "bad_teacher:load", "args": {"rule": rule, "tokens": tokens}}


@pytest.mark.parametrize("change, expect", [
    ({"entry_point": "no_such_module_xyz:load"}, "cannot import no_such_module_xyz"),
    ({"entry_point": "bad_teacher:nothing"}, "bad_teacher has no function nothing"),
    ({"entry_point": "bad_teacher:lacking", "args": {}}, "lacks tokens, blank, input_dim"),
    ({"entry_point": "bad_teacher:raises", "args": {}}, "failed (RuntimeError: no GPU here)"),
    ({"rule": "shape"}, "log_probs must be (T'"),
    ({"rule": "nan"}, "log_probs are not finite"),
    ({"rule": "lengths"}, "output lengths must be ceil(lengths / 2)"),
    ({"tokens": ["<blank>", "x"]}, "tokens 'x' have no counterpart in the student's vocabulary"),
    ({"layers": [2]}, "dump.layers: [2] out of range; the teacher has layers 1"),
])
def test_a_wrong_teacher_is_a_one_line_error_and_writes_nothing(tiny_corpus, tmp_path, monkeypatch, change, expect):
    spec = _bad_module(tmp_path, monkeypatch, "ok", tiny_corpus)
    layers = change.pop("layers", [1])
    for k in ("rule", "tokens"):
        if k in change:
            spec["args"][k] = change.pop(k)
    spec.update(change)
    out = tmp_path / "c.zarr"
    with pytest.raises(OfflineKDError, match=None) as err:
        dump_teacher.run(dump_cfg(spec, tiny_corpus, out, layers=layers), **QUIET)
    msg = str(err.value)
    assert expect in msg and "\n" not in msg, msg
    assert not out.exists()


def test_the_ok_teacher_of_those_tests_dumps(tiny_corpus, tmp_path, monkeypatch):
    """The control for the test above: the same module with no rule broken makes a cache."""
    spec = _bad_module(tmp_path, monkeypatch, "ok", tiny_corpus)
    dump_teacher.run(dump_cfg(spec, tiny_corpus, tmp_path / "c.zarr", layers=[1]), **QUIET)
    assert TeacherCache(str(tmp_path / "c.zarr")).meta.complete


def test_a_teacher_failing_on_a_later_batch_names_it_and_the_rerun_resumes(tiny_corpus, tmp_path, monkeypatch):
    """The user's forward raises on the 5th batch (not the probe): one line naming the teacher and the batch's first
    utterance; the shards written before it stay, and the same command resumes to the cache an unbroken dump
    writes, bit for bit (issue #47)."""
    from offline_kd.cache.layout import open_group
    from offline_kd.cache.progress import shards_done
    spec = _bad_module(tmp_path, monkeypatch, "ok", tiny_corpus)
    out, whole = tmp_path / "c.zarr", tmp_path / "whole.zarr"
    base = {"teacher": spec, "corpus": str(tiny_corpus), "splits": ["train", "dev"], "layers": [1], "batch_size": 8,
            "chunk_frames": 32, "shard_chunks": 2, "progress": False, "device": "cpu"}
    cfg = write_yaml(tmp_path / "dump.yaml", {"dump": {**base, "output": str(out)}})
    monkeypatch.setenv("BAD_TEACHER_FAIL_AT", "6")           # call 1 is the probe
    res = CliRunner().invoke(main, ["dump-teacher", "--config", str(cfg)])
    assert res.exit_code != 0 and "Traceback" not in res.output, res.output
    line = [x for x in res.output.splitlines() if x.startswith("Error")]
    assert len(line) == 1 and "bad_teacher:load" in line[0], res.output
    assert "CUDA out of memory (simulated)" in line[0] and "on the batch starting with utterance " in line[0]
    first = line[0].split("starting with utterance ")[1].split(";")[0]
    from offline_kd.data.corpus import Corpus
    assert first in Corpus(tiny_corpus).split("train").utterance_ids
    assert "resumes" in line[0]
    done = shards_done(open_group(str(out), "r")["train"])
    assert 0 < done.sum() < len(done)                      # some shards kept, not all
    monkeypatch.delenv("BAD_TEACHER_FAIL_AT")
    res = CliRunner().invoke(main, ["dump-teacher", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert "resuming" in res.output
    res = CliRunner().invoke(main, ["dump-teacher", "--config", str(write_yaml(
        tmp_path / "whole.yaml", {"dump": {**base, "output": str(whole)}}))])
    assert res.exit_code == 0, res.output
    assert_same_cache(whole, out)


@pytest.mark.parametrize("value, expect", [
    ({"entry": "x:y"}, "unknown: entry"),
    ({"entry_point": "nocolon"}, "must be 'module.path:function'"),
    ({"entry_point": "a:b", "args": [1]}, "args must be a mapping"),
    ("{entry_point: [", "not a YAML mapping"),
    (3, "must be a checkpoint path or a mapping"),
])
def test_teacher_spec_errors(value, expect):
    with pytest.raises(OfflineKDError, match=None) as err:
        parse_teacher(value)
    assert expect in str(err.value)


def test_parse_teacher_accepts_a_path_and_inline_yaml():
    assert parse_teacher("runs/t/checkpoint_best.pt") == "runs/t/checkpoint_best.pt"
    assert parse_teacher("{entry_point: m:load, args: {a: 1}}") == {"entry_point": "m:load", "args": {"a": 1}}
