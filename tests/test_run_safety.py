"""#13 items 5 and 7: one writer per run directory and per cache; --resume refuses a changed config by name."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import QUIET, dump_cfg, experiment_dict
from offline_kd.commands import dump_teacher, train
from offline_kd.config import ExperimentConfig, build_dataclass
from offline_kd.errors import OfflineKDError

ROOT = Path(__file__).resolve().parent.parent


def _hold(lock_file: Path, what: str):
    """Another process holding a WriterLock on lock_file until killed."""
    code = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r})\n"
            f"from offline_kd.locking import WriterLock\n"
            f"with WriterLock({str(lock_file)!r}, {what!r}, 'hint'):\n"
            f"    print('held', flush=True); time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_run_into_a_busy_run_directory_is_refused(tiny_corpus, tmp_path):
    out = tmp_path / "run"
    holder = _hold(out / ".lock", f"run directory {out}")
    try:
        cfg = build_dataclass(ExperimentConfig, experiment_dict(tiny_corpus, out, epochs=1))
        with pytest.raises(OfflineKDError, match=rf"run directory {out} is in use by offline-kd pid {holder.pid} "
                                                 rf".*choose another train.output_dir"):
            train.run(cfg, **QUIET)
        assert sorted(p.name for p in out.iterdir()) == [".lock"]       # nothing of the refused run
    finally:
        holder.kill()
        holder.wait()
    train.run(cfg, **QUIET)                      # the lock dies with its holder: no stale lock
    assert (out / "checkpoint_last.pt").is_file() and not (out / ".lock").exists()


def test_a_second_dump_into_a_busy_cache_is_refused(tiny_teacher, tiny_corpus, tmp_path):
    out = tmp_path / "c.zarr"
    holder = _hold(tmp_path / "c.zarr.lock", f"cache {out}")
    try:
        with pytest.raises(OfflineKDError, match=rf"cache {out} is in use by offline-kd pid {holder.pid}"):
            dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, out, splits=["train"]), **QUIET)
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()


@pytest.fixture(scope="module")
def one_epoch_run(tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "run"
    train.run(build_dataclass(ExperimentConfig, experiment_dict(tiny_corpus, out, epochs=1)), **QUIET)
    return out


@pytest.mark.parametrize("change, named", [
    ({"train": {"lr": 0.02}}, "train.lr: 0.01 -> 0.02"),
    ({"model": {"hidden_dim": 32}}, "model.hidden_dim: 24 -> 32"),
    ({"augment": {"time_masks": 1}}, "augment.time_masks: 0 -> 1"),
    ({"train": {"precision": "bf16"}}, "train.precision: 'fp32' -> 'bf16'"),
])
def test_resume_with_a_changed_setting_is_refused_by_name(one_epoch_run, tiny_corpus, change, named):
    d = experiment_dict(tiny_corpus, one_epoch_run, epochs=2)
    for section, kv in change.items():
        d.setdefault(section, {}).update(kv)
    before = (one_epoch_run / "config.yaml").read_text()
    with pytest.raises(OfflineKDError, match=rf"`resume`: the config differs .*\({named}\); a resumed run may "
                                             rf"change only train.epochs"):
        train.run(build_dataclass(ExperimentConfig, d), resume=True, **QUIET)
    assert (one_epoch_run / "config.yaml").read_text() == before


def test_resume_may_extend_a_run(one_epoch_run, tiny_corpus):
    d = experiment_dict(tiny_corpus, one_epoch_run, epochs=2)
    d["train"]["progress"] = True
    train.run(build_dataclass(ExperimentConfig, d), resume=True, **QUIET)
    assert yaml.safe_load((one_epoch_run / "config.yaml").read_text())["train"]["epochs"] == 2


@pytest.mark.parametrize("stop", [OfflineKDError("fit failed"), KeyboardInterrupt()], ids=["error", "interrupt"])
def test_a_dump_that_fails_while_fitting_leaves_nothing_and_reruns(tiny_teacher, tiny_corpus, tmp_path, monkeypatch,
                                                                   stop):
    """#29 item 7: a dump stopped while fitting its codecs (before the cache's metadata exists) leaves nothing at
    dump.output (it used to leave a bare zarr.json that read as "not an offline-kd cache"), and the rerun dumps."""
    from click.testing import CliRunner
    from offline_kd.cli import main
    out = tmp_path / "c.zarr"
    codecs = {"hidden": "lowrank", "lowrank_rank": 8, "lowrank_coeff": "int8", "lowrank_fit_frames": 300}
    from offline_kd.distillation import dump as dump_module
    real = dump_module._fit_state

    def fails(*a, **k):
        raise stop
    monkeypatch.setattr(dump_module, "_fit_state", fails)
    with pytest.raises(type(stop)):
        dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, out, splits=["dev"], codecs=codecs), **QUIET)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []
    r = CliRunner().invoke(main, ["cache", "info", str(out)])
    assert r.exit_code != 0 and "not an offline-kd cache" not in r.output
    monkeypatch.setattr(dump_module, "_fit_state", real)
    res = dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, out, splits=["dev"], codecs=codecs), **QUIET)
    assert res["frames_written"] > 0


def test_a_dump_killed_while_storing_its_fitted_state_reruns(tiny_teacher, tiny_corpus, tmp_path):
    """#29 item 7: what a dump killed between its fitted codec state and its metadata leaves (a group holding only
    lowrank/ or prior/, no offline-kd metadata) is taken for an empty cache by the rerun, without --overwrite."""
    import zarr
    out = tmp_path / "c.zarr"
    root = zarr.open_group(str(out), mode="w")
    root.create_array("lowrank/hidden_1/basis", shape=(2, 3), dtype="float32")
    codecs = {"hidden": "lowrank", "lowrank_rank": 8, "lowrank_coeff": "int8", "lowrank_fit_frames": 300}
    res = dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, out, splits=["dev"], codecs=codecs), **QUIET)
    assert res["frames_written"] > 0
    zarr.open_group(str(tmp_path / "foreign.zarr"), mode="w").create_array("x", shape=(2,), dtype="float32")
    with pytest.raises(OfflineKDError, match="not an offline-kd cache"):       # anything else is still refused
        dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, tmp_path / "foreign.zarr", splits=["dev"]), **QUIET)


def test_an_interrupted_cache_read_leaves_zarrs_loop_idle():
    """Ctrl-C while a cache read waits on zarr's event loop: the read's tasks are cancelled before the interrupt
    goes on, so zarr's exit handler (which closes the loop after 0.2 s) does not find it busy and fail with
    'Cannot close a running event loop' (issue #47). zarr's own sync() leaves them running."""
    import asyncio
    import os
    import signal
    import threading
    from zarr.core.sync import _get_loop
    from offline_kd.cache import reader

    async def slow_read():
        await asyncio.gather(*(asyncio.sleep(30) for _ in range(4)))

    async def pending():
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    loop = _get_loop()
    threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        reader._zarr_sync(slow_read())
    assert asyncio.run_coroutine_threadsafe(pending(), loop).result(timeout=5) == []
