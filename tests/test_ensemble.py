"""Several teachers, one cache (teachers/ensemble.py): `dump.teacher: [A, B, C]` stores the weighted mean of the
members' probabilities (checked against each member's own cache), the first member's hidden states, every member
in the record (`cache info`), weights from the members' dev WER, an identity that covers the list; the same spec
verifies the cache and distils online on the same targets; wrong lists are one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import QUIET, dump_cfg, experiment_dict, offline_and_online_steps, student_dict
from offline_kd.cache.confidence import MEMBERS, read as read_confidence
from offline_kd.cache.reader import TeacherCache
from offline_kd.cli import main
from offline_kd.commands import dump_teacher, train
from offline_kd.config import DumpConfig, ExperimentConfig, build_dataclass
from offline_kd.errors import OfflineKDError
from offline_kd.models.checkpoint import checkpoint_dev, load_checkpoint


@pytest.fixture(scope="module")
def members(tiny_corpus, tiny_teacher, tmp_path_factory):
    """The shared tiny teacher, another seed of it and a Conformer (three teachers of two architectures)."""
    out = [tiny_teacher]
    for name, extra in (("seed1", {}), ("conformer", {"type": "conformer", "num_heads": 2, "conv_kernel": 5,
                                                      "subsampling_channels": 4})):
        d = tmp_path_factory.mktemp(name)
        cfg = experiment_dict(tiny_corpus, d, hidden=32, layers=3, epochs=6, batch_size=4, seed=1)
        cfg["model"].update(extra)
        train.run(build_dataclass(ExperimentConfig, cfg), **QUIET)
        out.append(d / "checkpoint_last.pt")
    return out


def ensemble_cfg(teacher, corpus, out, **kw) -> DumpConfig:
    base = dump_cfg("x", corpus, out, **kw)
    return build_dataclass(DumpConfig, {**json.loads(json.dumps(_plain(base))), "teacher": teacher})


def _plain(cfg) -> dict:
    from dataclasses import asdict
    return asdict(cfg)


def arrays(path, split="train"):
    s = TeacherCache(str(path)).split(split)
    return {u: s.read(s.position[u]) for u in s.utterance_ids}


def test_the_cache_holds_the_mean_of_the_members_probabilities(members, tiny_corpus, tmp_path):
    singles = []
    for i, m in enumerate(members):
        dump_teacher.run(dump_cfg(m, tiny_corpus, tmp_path / f"s{i}.zarr", splits=["train"]), **QUIET)
        singles.append(arrays(tmp_path / f"s{i}.zarr"))
    dump_teacher.run(ensemble_cfg([str(m) for m in members], tiny_corpus, tmp_path / "e.zarr", splits=["train"]),
                     **QUIET)
    ens = arrays(tmp_path / "e.zarr")
    assert set(ens) == set(singles[0])
    for u, got in ens.items():
        want = np.log(np.mean([np.exp(s[u]["log_probs"].astype(np.float64)) for s in singles], 0))
        np.testing.assert_allclose(got["log_probs"], want, atol=2e-5)
        np.testing.assert_array_equal(got["best_path"], got["log_probs"].argmax(-1))
        for L in (1, 3):                                        # the first member's hidden states
            np.testing.assert_array_equal(got["hidden"][L], singles[0][u]["hidden"][L])
    # each member's confidence in the cached 1-best: per frame (member_probs) and per utterance (member_confidence)
    split = TeacherCache(str(tmp_path / "e.zarr")).split("train")
    members_conf = read_confidence(split.group, MEMBERS)
    assert members_conf.shape == (len(ens), len(members))
    for u, got in ens.items():
        best = got["best_path"]
        want = np.stack([np.exp(np.take_along_axis(s[u]["log_probs"], best[:, None], 1)[:, 0]) for s in singles], 1)
        np.testing.assert_allclose(got["member_probs"].astype(np.float64), want, rtol=2e-3, atol=2e-4)
        spoken = best != 0
        np.testing.assert_allclose(members_conf[split.position[u]], (want[spoken] if spoken.any() else want).mean(0),
                                   rtol=2e-3, atol=2e-4)
    assert not np.allclose(members_conf[:, 0], members_conf[:, 2])       # the Conformer is not the first BiLSTM
    # encoded where the teacher ran (dump.encode_on: device), the same bytes
    dump_teacher.run(ensemble_cfg([str(m) for m in members], tiny_corpus, tmp_path / "d.zarr", splits=["train"],
                                  encode_on="device"), **QUIET)
    for u, got in arrays(tmp_path / "d.zarr").items():
        np.testing.assert_array_equal(got["member_probs"], ens[u]["member_probs"])
    info = CliRunner().invoke(main, ["cache", "info", str(tmp_path / "e.zarr")])
    assert info.exit_code == 0, info.output
    assert "each teacher's confidence in that 1-best, median " + " / ".join(
        f"{m:.3f}" for m in np.median(members_conf, 0)) in info.output, info.output
    assert "teacher: ensemble of 3 teachers (weighted mean of the members' probabilities, weights 0.333, 0.333, " \
           "0.333)" in info.output, info.output
    for k, m in enumerate(members, start=1):
        assert f"teacher {k}: checkpoint {m}, weight 0.333, dev WER" in info.output
    # the same spec, inline, verifies the cache against the live teachers
    inline = json.dumps([str(m) for m in members])
    res = CliRunner().invoke(main, ["cache", "verify", str(tmp_path / "e.zarr"), "--teacher", inline, "--sample",
                                    "4", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["fidelity"]["top1_agreement"] == 1.0


def test_the_dump_measures_the_ensemble_on_the_cached_dev_split_and_warns_below_its_best_member(
        members, tiny_corpus, tmp_path, monkeypatch):
    """An ensemble records no dev figures of its own: the dump measures its cached dev 1-best (greedy, against the
    corpus), train-student and cache info use it, and a mean that decodes worse than its best member is named."""
    from offline_kd.data.corpus import Corpus
    from offline_kd.data.targets import collapse_best_path
    from offline_kd.decoding.metrics import error_rates
    from offline_kd.teachers import source
    lines = []
    dump_teacher.run(ensemble_cfg([str(m) for m in members], tiny_corpus, tmp_path / "e.zarr",
                                  splits=["train", "dev"]), log=lines.append)
    cache = TeacherCache(str(tmp_path / "e.zarr"))
    dev = cache.split("dev")
    reader = Corpus(tiny_corpus).split("dev")
    text = dict(zip(reader.utterance_ids, reader.transcripts))
    vocab = Corpus(tiny_corpus).vocab
    want = error_rates([text[u] for u in dev.utterance_ids],
                       [vocab.decode(collapse_best_path(dev.read(dev.position[u])["best_path"]).tolist())
                        for u in dev.utterance_ids])
    got = cache.meta.teacher_dev
    assert got == cache.meta.teacher["cached_dev"] and "dev" not in cache.meta.teacher
    assert got["wer"] == pytest.approx(want["wer"]) and got["cer"] == pytest.approx(want["cer"])
    assert got["split"] == "dev" and got["utterances"] == len(dev.utterance_ids)
    assert any(f"teacher greedy WER on the cached dev split: {got['wer']:.2f}%" in x for x in lines), lines
    best = min(m["dev"]["wer"] for m in cache.meta.teacher["members"])
    warned = [x for x in lines if "warning: the ensemble's greedy dev WER" in x]
    assert bool(warned) == (got["wer"] > best), (got, best, lines)
    info = CliRunner().invoke(main, ["cache", "info", str(tmp_path / "e.zarr")])
    assert f"teacher dev WER {got['wer']:.2f}% CER {got['cer']:.2f}% (greedy, the cached 1-best of dev" in info.output
    # the warning itself, with members whose recorded dev WER is better than the mean's
    real = source._load_ensemble

    def flattering(*a, **k):          # members that claim a dev WER of 0.01%
        t = real(*a, **k)
        for m in t.record["members"]:
            m["dev"] = {**(m.get("dev") or {}), "wer": 0.01}
        return t
    monkeypatch.setattr(source, "_load_ensemble", flattering)
    lines.clear()
    dump_teacher.run(ensemble_cfg([str(m) for m in members[:2]], tiny_corpus, tmp_path / "w.zarr",
                                  splits=["dev"]), log=lines.append)
    assert any("warning: the ensemble's greedy dev WER" in x and "above its best member's 0.01% (teacher 1)" in x
               for x in lines), lines


def test_weights_from_the_members_dev_wer_and_an_identity_that_covers_them(members, tiny_corpus, tmp_path):
    spec = {"ensemble": [str(m) for m in members[:2]], "weights": "dev_wer"}
    dump_teacher.run(ensemble_cfg(spec, tiny_corpus, tmp_path / "w.zarr", splits=["train"]), **QUIET)
    meta = TeacherCache(str(tmp_path / "w.zarr")).meta
    wers = [checkpoint_dev(load_checkpoint(m))["wer"] for m in members[:2]]
    want = [(1 / w) / sum(1 / x for x in wers) for w in wers]
    assert meta.teacher["weights"] == pytest.approx(want) and meta.teacher["weights_from"] == "dev_wer"
    dump_teacher.run(ensemble_cfg({"ensemble": spec["ensemble"], "weights": [1, 1]}, tiny_corpus,
                                  tmp_path / "u.zarr", splits=["train"]), **QUIET)
    assert TeacherCache(str(tmp_path / "u.zarr")).meta.identity_sha256 != meta.identity_sha256
    # the same output with other weights is another dump: refused, not resumed
    with pytest.raises(OfflineKDError, match="holds a cache from another teacher, corpus or dump config"):
        dump_teacher.run(ensemble_cfg({"ensemble": spec["ensemble"], "weights": [1, 3]}, tiny_corpus,
                                      tmp_path / "w.zarr", splits=["train"]), **QUIET)


def test_online_distillation_from_the_ensemble_sees_the_cached_targets(members, tiny_corpus, tmp_path):
    spec = [str(m) for m in members[:2]]
    cache = tmp_path / "e.zarr"
    dump_teacher.run(ensemble_cfg(spec, tiny_corpus, cache), **QUIET)
    off = build_dataclass(ExperimentConfig, student_dict(tiny_corpus, cache, tmp_path / "off", epochs=1))
    on = build_dataclass(ExperimentConfig, student_dict(tiny_corpus, cache, tmp_path / "on", epochs=1))
    a, b = offline_and_online_steps(off, on, json.dumps(spec))
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        for k in ("train/soft", "train/ctc", "train/feature"):
            assert x[k] == pytest.approx(y[k], rel=1e-4, abs=1e-6), (x["step"], k)


@pytest.mark.parametrize("teacher, expect", [
    (["a.pt"], "an ensemble lists at least two teachers"),
    ({"ensemble": ["a.pt", ["b.pt", "c.pt"]]}, "an ensemble's teachers are single teachers"),
    ({"ensemble": ["A", "B"], "weights": [1]}, "dump.teacher.weights: give 2 non-negative numbers"),
    ({"ensemble": ["A", "B"], "weights": "best"}, "dump.teacher.weights must be uniform, dev_wer or a list"),
    ({"ensemble": ["A", "B"], "mean": "log"}, "an ensemble mapping takes ensemble"),
])
def test_a_wrong_ensemble_is_a_one_line_error_and_writes_nothing(members, tiny_corpus, tmp_path, teacher, expect):
    names = {"A": str(members[0]), "B": str(members[1])}
    if isinstance(teacher, dict) and "ensemble" in teacher:
        teacher = {**teacher, "ensemble": [names.get(m, m) if isinstance(m, str) else m for m in teacher["ensemble"]]}
    with pytest.raises(OfflineKDError) as err:
        dump_teacher.run(ensemble_cfg(teacher, tiny_corpus, tmp_path / "x.zarr"), **QUIET)
    assert expect in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert not (tmp_path / "x.zarr").exists()


def test_the_identity_covers_each_members_alignment_and_the_precision_applies(members, tiny_corpus, tmp_path):
    """Another dump.subsampling aligns every member onto another rate: another identity, never a resume of the
    old cache. dump.precision runs every member under autocast as it runs one teacher."""
    spec = [str(m) for m in members[:2]]
    ids = []
    for name, kw in (("a", {}), ("b", {"subsampling": 4})):
        dump_teacher.run(ensemble_cfg(spec, tiny_corpus, tmp_path / f"{name}.zarr", splits=["train"],
                                      skip_invalid=True, **kw), **QUIET)
        ids.append(TeacherCache(str(tmp_path / f"{name}.zarr")).meta.identity_sha256)
    assert ids[0] != ids[1]
    dump_teacher.run(ensemble_cfg(spec, tiny_corpus, tmp_path / "bf16.zarr", splits=["train"], precision="bf16"),
                     **QUIET)
    a, b = arrays(tmp_path / "a.zarr"), arrays(tmp_path / "bf16.zarr")
    diff = max(float(np.abs(a[u]["log_probs"] - b[u]["log_probs"]).max()) for u in a)
    assert 0 < diff < 0.5, diff
