"""`model.type: conformer` through the whole workflow on the tiny corpus, each pair of types: a Conformer teacher
trained and dumped, with a Conformer student and a BiLSTM student from it; a Conformer student from a BiLSTM
teacher's cache; the frame rates reconciled by dump.subsampling or refused with the setting that fixes them; the
student exported to ONNX."""

from __future__ import annotations

import pytest

from helpers import QUIET, dump_cfg, experiment_dict, student_dict
from offline_kd.commands import dump_teacher, train, train_student
from offline_kd.config import ExperimentConfig, build_dataclass
from offline_kd.errors import OfflineKDError
from offline_kd.models.checkpoint import model_from_checkpoint

CONFORMER = {"type": "conformer", "hidden_dim": 16, "num_layers": 2, "num_heads": 2, "conv_kernel": 5,
             "subsampling_channels": 4}


def _student(tiny_corpus, cache, out, subsampling, **distill):
    d = student_dict(tiny_corpus, cache, out, epochs=2, **distill)
    d["model"].update(CONFORMER, subsampling=subsampling)
    d["data"]["skip_invalid"] = subsampling > 2        # at 4x a few tiny utterances are shorter than their text
    return build_dataclass(ExperimentConfig, d)


def test_a_conformer_teacher_trains_dumps_and_is_rebuilt(tiny_corpus, tmp_path):
    d = experiment_dict(tiny_corpus, tmp_path / "t", epochs=2)
    d["model"].update(CONFORMER, subsampling=4)
    d["data"]["skip_invalid"] = True
    train.run(build_dataclass(ExperimentConfig, d), **QUIET)
    model, _, ckpt = model_from_checkpoint(tmp_path / "t" / "checkpoint_last.pt")
    assert model.model_type == "conformer" and ckpt["model_config"]["subsampling"] == 4
    out = tmp_path / "c.zarr"
    dump_teacher.run(dump_cfg(tmp_path / "t" / "checkpoint_last.pt", tiny_corpus, out, layers=[1, 2],
                                 skip_invalid=True), **QUIET)
    from offline_kd import TeacherCache
    assert TeacherCache(str(out)).meta.subsampling == 4
    # a Conformer student of it at its rate, and a 2x BiLSTM student from the same teacher dumped at 2x (each
    # teacher frame repeated)
    train_student.run(_student(tiny_corpus, out, tmp_path / "cc", 4, gamma=0.1, layer_mapping={1: 1, 2: 2}), **QUIET)
    at2 = tmp_path / "c2.zarr"
    dump_teacher.run(dump_cfg(tmp_path / "t" / "checkpoint_last.pt", tiny_corpus, at2, layers=[1, 2], subsampling=2,
                              skip_invalid=True), **QUIET)
    assert TeacherCache(str(at2)).meta.subsampling == 2
    d = student_dict(tiny_corpus, at2, tmp_path / "cb", epochs=1, layer_mapping={1: 1, 2: 2})
    train_student.run(build_dataclass(ExperimentConfig, d), **QUIET)
    assert model_from_checkpoint(tmp_path / "cb" / "checkpoint_last.pt")[0].model_type == "bilstm"


def test_a_conformer_student_distils_from_a_bilstm_cache_at_its_rate(tiny_teacher, tiny_corpus, f32_cache, tmp_path):
    # the cache is 2x (the BiLSTM teacher's): a 2x Conformer trains from it ...
    res = train_student.run(_student(tiny_corpus, f32_cache, tmp_path / "s2", 2, gamma=0.1,
                                     layer_mapping={1: 1, 2: 3}), **QUIET)
    assert res["best_dev_wer"] <= 100
    model, _, _ = model_from_checkpoint(tmp_path / "s2" / "checkpoint_last.pt")
    assert model.model_type == "conformer" and model.subsampling == 2
    # ... a 4x one is refused with the settings that fix it, and trains from a cache dumped at its rate
    with pytest.raises(OfflineKDError, match=r"set model.subsampling=2, or dump a cache at the student's rate "
                                             r"\(dump.subsampling=4\)"):
        train_student.run(_student(tiny_corpus, f32_cache, tmp_path / "s4", 4), **QUIET)
    at4 = tmp_path / "at4.zarr"
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, at4, subsampling=4, skip_invalid=True), **QUIET)
    train_student.run(_student(tiny_corpus, at4, tmp_path / "s4b", 4), **QUIET)
    assert (tmp_path / "s4b" / "checkpoint_best.pt").is_file()


def test_a_conformer_student_exports_to_onnx_and_checks_itself(tiny_corpus, f32_cache, tmp_path):
    pytest.importorskip("onnxruntime", reason="the export extra is not installed (pip install -e '.[export]')")
    from offline_kd import export_model
    train_student.run(_student(tiny_corpus, f32_cache, tmp_path / "s", 2), **QUIET)
    res = export_model(str(tmp_path / "s" / "checkpoint_best.pt"), str(tmp_path / "exp"), corpus=str(tiny_corpus),
                       **QUIET)
    assert (tmp_path / "exp" / "model.onnx").is_file() and res.check["fp32"]["max_abs_diff"] < 1e-3
