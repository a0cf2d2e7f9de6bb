"""`offline-kd report`: each run keeps one colour and line style in every panel of curves.png (read back from the
figure's artists), panels name the runs without data, and the speed column is the isolated measurement."""

from __future__ import annotations

import json

import pytest

from helpers import experiment_dict, QUIET, student_dict
from offline_kd.config import ExperimentConfig, build_dataclass
from offline_kd.commands import train, train_student
from offline_kd.training import report


@pytest.fixture(scope="module")
def four_runs(tiny_teacher, tiny_corpus, f32_cache, tmp_path_factory):  # noqa: F811
    """teacher, a CTC baseline and two distilled students (one without feature matching): the issue's set-up."""
    root = tmp_path_factory.mktemp("report_runs")
    train.run(build_dataclass(ExperimentConfig, experiment_dict(tiny_corpus, root / "baseline", hidden=16, epochs=2)),
              **QUIET)
    for name, extra in (("kd", {}), ("kd_nofm", {"gamma": 0.0})):
        train_student.run(build_dataclass(ExperimentConfig, student_dict(tiny_corpus, f32_cache, root / name,
                                                                         epochs=2, **extra)), **QUIET)
    return [tiny_teacher.parent, root / "baseline", root / "kd", root / "kd_nofm"]


def test_each_run_keeps_its_colour_in_every_panel(four_runs):
    names = [d.name for d in four_runs]
    fig = report.curves_figure({d.name: report._epochs(d) for d in four_runs})
    seen: dict[str, tuple] = {}
    panels = {ax.get_title(): ax for ax in fig.axes}
    for title, ax in panels.items():
        shown = []
        for line in ax.get_lines():
            style = (tuple(line.get_color()) if not isinstance(line.get_color(), str) else line.get_color(),
                     line.get_linestyle())
            assert seen.setdefault(line.get_label(), style) == style, (title, line.get_label())
            shown.append(line.get_label())
        assert ax.get_legend() is not None and [t.get_text() for t in ax.get_legend().get_texts()] == shown
        missing = [n for n in names if n not in shown]
        notes = " ".join(t.get_text() for t in ax.texts)
        assert all(n in notes for n in missing) and (not missing or "no data" in notes), (title, notes)
    assert len(set(seen.values())) == len(names) == len(seen)          # four runs, four distinct styles
    soft = panels["train loss: soft"]
    assert {line.get_label() for line in soft.get_lines()} == {"kd", "kd_nofm"}
    feature = panels["train loss: feature"]
    assert {line.get_label() for line in feature.get_lines()} == {"kd"}


def test_speed_column_is_the_isolated_measurement(four_runs, tmp_path, monkeypatch):
    from offline_kd.runtime import loaders as inference
    calls = []

    def fake_speed(model, reader, indices, vocab, device, batch_size=32, repeats=5, max_frames=20000):
        calls.append((batch_size, repeats))
        return {"frames_per_second": 4321.0 + len(calls), "passes": [1.0] * repeats, "frames": 999,
                "batch_size": batch_size, "repeats": repeats, "threads": 2, "device": "cpu"}
    monkeypatch.setattr(inference, "decode_speed", fake_speed)
    out = report.run([str(d) for d in four_runs], str(tmp_path / "rep"), split="dev", device="cpu", **QUIET)
    assert calls == [(32, 5)] * 4                          # every run, the same conditions
    assert [r["frames_per_second"] for r in out["rows"]] == [4322.0, 4323.0, 4324.0, 4325.0]
    for r, fps in zip(out["rows"], ("4322", "4323", "4324", "4325")):
        assert f"| {r['name']} |" in out["table"] and f"| {fps} |" in out["table"]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "median of 5 passes after a warm-up" in md and "batch 32" in md
    rows = json.loads((tmp_path / "rep" / "results.json").read_text())
    assert rows[0]["decode_speed"]["repeats"] == 5


def test_decode_speed_measures_a_fixed_workload(tiny_teacher, tiny_corpus):
    import numpy as np
    from offline_kd.data.corpus import Corpus
    from offline_kd.models.checkpoint import model_from_checkpoint
    from offline_kd.runtime.loaders import decode_speed
    import torch
    model, vocab, _ = model_from_checkpoint(tiny_teacher)
    reader = Corpus(tiny_corpus).split("dev")
    s = decode_speed(model, reader, np.arange(len(reader)), vocab, torch.device("cpu"), batch_size=8, repeats=3)
    assert s["repeats"] == 3 and len(s["passes"]) == 3 and s["frames"] == int(reader.lengths.sum())
    assert s["frames_per_second"] == pytest.approx(float(np.median(s["passes"])), rel=1e-3)
