"""Safe by default (#29): loading a file never runs code, a removed seal is not an unsealed cache, features changed
under their old hash never meet stale targets, wrong checkpoints and hostile cache metadata are one-line errors."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import h5py
import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from helpers import QUIET, dump_cfg, student_dict
from offline_kd.cache.integrity import INTEGRITY_KEY, MISSING_SEAL
from offline_kd.cache.layout import META_KEY
from offline_kd.cache.reader import TeacherCache
from offline_kd.cache.verify import format_verify, verify_cache
from offline_kd.distillation.fidelity import verify_with_teacher
from offline_kd.cli import main
from offline_kd.commands import dump_teacher, train_student
from offline_kd.config import ExperimentConfig, build_dataclass
from offline_kd.errors import OfflineKDError
from offline_kd.models.checkpoint import load_checkpoint, model_from_checkpoint, rng_state, set_rng_state


def _one_line_failure(res) -> None:
    """A CLI run that failed the way a user mistake should: non-zero exit, no traceback, an error message."""
    assert res.exit_code != 0, res.output
    assert isinstance(res.exception, SystemExit), repr(res.exception)     # not an uncaught exception
    assert "Traceback" not in res.output and "error" in res.output.lower(), res.output


# ------------------------------------------------------------------------------ 1. loading never runs code
class _Payload:
    """Creates a file when unpickled: what a hostile checkpoint would do."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def _hostile_checkpoint(tiny_teacher, tmp_path, name="hostile.pt"):
    ckpt = torch.load(tiny_teacher, weights_only=True)
    ckpt["extra"] = _Payload(tmp_path / "pwned")
    path = tmp_path / name
    torch.save(ckpt, path)
    return path


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tiny_teacher, tmp_path):
    path = _hostile_checkpoint(tiny_teacher, tmp_path)
    with pytest.raises(OfflineKDError, match="refused: the file asks for Python objects .*loads weights only"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()
    bare = tmp_path / "bare.pkl"                    # a plain pickle, not a torch file at all
    bare.write_bytes(pickle.dumps(_Payload(tmp_path / "pwned")))
    with pytest.raises(OfflineKDError, match="bare.pkl: refused"):
        load_checkpoint(bare)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("argv", [["evaluate", "--checkpoint", "{ckpt}", "--corpus", "{corpus}", "--split", "dev"],
                                  ["cache", "verify", "{cache}", "--teacher", "{ckpt}"]])
def test_commands_refuse_a_hostile_checkpoint_in_one_line(argv, tiny_teacher, tiny_corpus, f32_cache, tmp_path):
    path = _hostile_checkpoint(tiny_teacher, tmp_path)
    args = [a.format(ckpt=path, corpus=tiny_corpus, cache=f32_cache) for a in argv]
    res = CliRunner().invoke(main, args)
    _one_line_failure(res)
    assert "refused: the file asks for Python objects" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "pwned").exists()


def test_checkpoints_hold_only_weights_and_plain_values_and_old_ones_still_load(tiny_teacher, tmp_path):
    # what training writes loads as weights only, the RNG state included, and restores the same streams
    assert load_checkpoint(tiny_teacher)["rng"]["numpy"][0] == "MT19937"
    np.random.seed(5)
    state = rng_state()
    a = np.random.rand(3)
    path = tmp_path / "rng.pt"
    torch.save({"rng": state}, path)
    set_rng_state(torch.load(path, weights_only=True)["rng"])
    np.testing.assert_array_equal(np.random.rand(3), a)
    # a checkpoint written before (numpy RNG state as an array) still loads
    legacy = torch.load(tiny_teacher, weights_only=True)
    legacy["rng"]["numpy"] = np.random.get_state()
    torch.save(legacy, tmp_path / "legacy.pt")
    assert isinstance(load_checkpoint(tmp_path / "legacy.pt")["rng"]["numpy"][1], np.ndarray)


# ------------------------------------------------------------- 4. checkpoints that load but are wrong
def _edited(tiny_teacher, tmp_path, edit):
    ckpt = torch.load(tiny_teacher, weights_only=True)
    edit(ckpt)
    path = tmp_path / "edited.pt"
    torch.save(ckpt, path)
    return path


def _shrink(ck):
    k = next(iter(ck["model_state_dict"]))
    ck["model_state_dict"][k] = ck["model_state_dict"][k][:1]


@pytest.mark.parametrize("edit,message", [
    (_shrink, "the weights do not fit the model .* has shape"),
    (lambda ck: ck.__setitem__("model_state_dict", {}), "the weights do not fit .*the state_dict is empty"),
    (lambda ck: ck["vocab"].pop("tokens"), "vocab lacks 'tokens'"),
    (lambda ck: ck["model_config"].__setitem__("hidden_dim", "big"), "model_config"),
    (lambda ck: ck["model_config"].__setitem__("num_classes", 5), "the weights do not fit"),
])
def test_a_wrong_checkpoint_is_a_one_line_error_in_every_command(edit, message, tiny_teacher, tiny_corpus,
                                                                 f32_cache, tmp_path):
    path = _edited(tiny_teacher, tmp_path, edit)
    with pytest.raises(OfflineKDError, match=message):
        model_from_checkpoint(path)
    for argv in (["evaluate", "--checkpoint", str(path), "--corpus", str(tiny_corpus), "--split", "dev"],
                 ["cache", "verify", str(f32_cache), "--teacher", str(path)]):
        res = CliRunner().invoke(main, argv)
        _one_line_failure(res)
        assert "edited.pt" in res.output, res.output
    res = CliRunner().invoke(main, ["dump-teacher", "--config", str(_dump_yaml(path, tiny_corpus, tmp_path))])
    _one_line_failure(res)
    assert "edited.pt" in res.output, res.output
    assert not (tmp_path / "d.zarr").exists()
    student = student_dict(tiny_corpus, f32_cache, tmp_path / "s", epochs=1)
    student["distill"]["init_checkpoint"] = str(path)                  # a student started from it
    with pytest.raises(OfflineKDError, match=f"edited.pt: .*{message}"):
        train_student.run(build_dataclass(ExperimentConfig, student), **QUIET)


def _dump_yaml(teacher, corpus, tmp_path):
    cfg = {"dump": {"teacher": str(teacher), "corpus": str(corpus), "output": str(tmp_path / "d.zarr"),
                    "splits": ["dev"], "layers": [1], "progress": False, "device": "cpu"}}
    path = tmp_path / "dump.yaml"
    path.write_text(json.dumps(cfg))
    return path


# --------------------------------------------------------------------- 2. a removed seal is not "unsealed"
def _without_seal(src, dst):
    shutil.copytree(src, dst)
    doc = json.loads((dst / "zarr.json").read_text())
    del doc["attributes"][INTEGRITY_KEY]
    (dst / "zarr.json").write_text(json.dumps(doc))


def test_a_format_2_cache_without_its_seal_is_refused(f32_cache, tiny_corpus, tmp_path):
    out = tmp_path / "c.zarr"
    _without_seal(f32_cache, out)
    root = zarr.open_group(str(out), mode="r+")
    meta = dict(root.attrs[META_KEY])
    meta["teacher"] = {**meta["teacher"], "dev": {"wer": 0.0, "cer": 0.0}}     # edit what the seal covered
    root.attrs[META_KEY] = meta
    res = verify_cache(str(out), **QUIET)
    assert not res["ok"] and MISSING_SEAL in res["problems"]
    assert "written before integrity seals" not in format_verify(res)
    with pytest.raises(OfflineKDError, match="the integrity seal is missing"):
        TeacherCache(str(out))
    cfg = build_dataclass(ExperimentConfig, student_dict(tiny_corpus, out, tmp_path / "s", epochs=1))
    with pytest.raises(OfflineKDError, match="the integrity seal is missing"):
        train_student.run(cfg, **QUIET)
    res = CliRunner().invoke(main, ["cache", "verify", str(out)])
    assert res.exit_code == 1 and "integrity seal is missing" in res.output


def test_a_format_1_cache_may_lack_the_seal_but_a_format_2_layout_claiming_format_1_may_not(f32_cache, tmp_path):
    out = tmp_path / "c.zarr"
    _without_seal(f32_cache, out)
    root = zarr.open_group(str(out), mode="r+")
    root.attrs[META_KEY] = {**root.attrs[META_KEY], "format_version": 1}
    assert MISSING_SEAL in verify_cache(str(out), **QUIET)["problems"]          # ids still stored as format 2
    split = TeacherCache(str(f32_cache)).split("train")
    g = zarr.open_group(str(out / "train"), mode="r+")
    for key, values in (("utterance_id", split.utterance_ids), ("feature_sha256", split.feature_hashes)):
        a = g.create_array(key, shape=(len(values),), dtype=str, overwrite=True)
        a[:] = np.asarray(values, dtype=object)
    res = verify_cache(str(out), **QUIET)
    assert res["ok"] and res["sealed"] is False
    assert "a format-1 cache written before integrity seals" in format_verify(res)


# -------------------------------------------------------- 3. changed features under their old hash
def _change_one_feature(corpus, split="train"):
    with h5py.File(corpus / f"{split}.h5", "r+") as f:
        f["features"][3, 0] += 1.0
        return (f["utterance_ids"][0].decode() if isinstance(f["utterance_ids"][0], bytes)
                else f["utterance_ids"][0])


def test_changed_features_are_found_by_validate_and_by_train_student(tiny_corpus, f32_cache, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, corpus)
    assert CliRunner().invoke(main, ["data", "validate", "--corpus", str(corpus), "--split", "train"]).exit_code == 0
    utt = _change_one_feature(corpus)
    res = CliRunner().invoke(main, ["data", "validate", "--corpus", str(corpus), "--split", "train"])
    _one_line_failure(res)
    assert "features differ from their stored feature_sha256" in res.output
    assert utt in res.output and "Traceback" not in res.output
    cfg = build_dataclass(ExperimentConfig, student_dict(corpus, f32_cache, tmp_path / "s", epochs=1))
    with pytest.raises(OfflineKDError, match=f"utterance {utt}: its features differ from their stored"):
        train_student.run(cfg, **QUIET)
    off = student_dict(corpus, f32_cache, tmp_path / "s2", epochs=1)
    off["distill"]["verify_reads"] = False          # the documented way out, for a corpus one has checked
    train_student.run(build_dataclass(ExperimentConfig, off), **QUIET)


# ---------------------------------------------------------------------- 6. names in metadata are not paths
@pytest.mark.parametrize("name", ["../../outside_split", "a/b", "..", "c:\\x"])
def test_split_names_from_the_metadata_cannot_be_paths(name, f32_cache, tmp_path):
    out = tmp_path / "c.zarr"
    shutil.copytree(f32_cache, out)
    root = zarr.open_group(str(out), mode="r+")
    root.attrs[META_KEY] = {**root.attrs[META_KEY], "splits": ["train", name]}
    for argv in (["cache", "info", str(out)], ["cache", "verify", str(out)]):
        res = CliRunner().invoke(main, argv)
        _one_line_failure(res)
        assert "is not a plain name" in res.output
        assert len(res.output.strip().splitlines()) == 1, res.output


def test_verify_follows_no_corpus_path_the_seal_does_not_cover(f32_cache, tiny_corpus, tiny_teacher, tmp_path):
    out = tmp_path / "c.zarr"
    shutil.copytree(f32_cache, out)
    root = zarr.open_group(str(out), mode="r+")
    root.attrs[META_KEY] = {**root.attrs[META_KEY], "corpus": str(tmp_path / "elsewhere")}
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(OfflineKDError, match="its corpus path is not followed: give the corpus with --corpus"):
        verify_with_teacher(str(out), teacher=str(tiny_teacher), sample=1, device="cpu", **QUIET)
    res = verify_with_teacher(str(out), teacher=str(tiny_teacher), sample=1, device="cpu", corpus=str(tiny_corpus),
                       **QUIET)
    assert not res["ok"] and res["fidelity"]["top1_agreement"] == 1.0     # the seal's finding, and the fidelity
    assert os.listdir(tmp_path / "elsewhere") == []


# ------------------------------------------------------------------------------ 7. leftovers and noise
def test_a_cache_replaced_under_a_reader_is_named_as_replaced(tiny_teacher, tiny_corpus, tmp_path):
    out = tmp_path / "c.zarr"
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, out, splits=["dev"]), **QUIET)
    split = TeacherCache(str(out)).split("dev")
    split.read(0)                                   # open and reading
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, out, splits=["dev"],
                              codecs={"log_probs": "float16", "hidden": "float16"}), overwrite=True, **QUIET)
    with pytest.raises(OfflineKDError, match="the cache was replaced while reading"):
        for p in range(len(split)):
            split.read(p)


def test_warnings_of_libraries_print_as_one_line_in_the_cli(f32_cache, tmp_path):
    import warnings as _w
    from zarr.errors import ZarrUserWarning
    from offline_kd import cli

    @cli.main.command("_warn_for_test")
    def _warn():
        _w.warn("Consolidated metadata is currently not part\\n of the spec", ZarrUserWarning, stacklevel=1)
    shown = _w.showwarning
    try:
        with _w.catch_warnings():
            _w.simplefilter("always")
            res = CliRunner().invoke(main, ["_warn_for_test"])
    finally:
        cli.main.commands.pop("_warn_for_test")
        _w.showwarning = shown
    assert res.exit_code == 0
    assert res.output.strip() == ("warning (ZarrUserWarning): Consolidated metadata is currently not part\\n of "
                                  "the spec")


class _RaisesInWorker(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        raise OfflineKDError("train.h5: utterance u1: its features differ from their stored feature_sha256")


def test_an_error_raised_in_a_loader_worker_prints_as_its_own_one_line_message():
    """Reads of the cache and of the features run in DataLoader workers on a GPU (data.num_workers auto): torch
    re-raises their OfflineKDError with the worker's traceback in the message; the CLI prints the message alone."""
    from offline_kd.errors import user_message
    loader = torch.utils.data.DataLoader(_RaisesInWorker(), num_workers=1, multiprocessing_context="fork")
    with pytest.raises(OfflineKDError) as info:
        next(iter(loader))
    assert "Original Traceback" in str(info.value)                       # what torch does
    assert user_message(info.value) == "train.h5: utterance u1: its features differ from their stored feature_sha256"
    assert user_message(OfflineKDError("plain")) == "plain"
