"""Resume that is really a resume: an interrupted job continues from where it stopped (it does not redo the work),
and ends bit for bit where the uninterrupted job ends, with randomness in play (dropout, SpecAugment, sampled
targets) so that RNG state that is not restored shows."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_same_cache, dump_cfg, experiment_dict, Killed, killed_after, QUIET
from offline_kd.cache import writer as cache_writer
from offline_kd.cache.reader import TeacherCache
from offline_kd.config import ExperimentConfig, build_dataclass
from offline_kd.commands import dump_teacher, train, train_student


@pytest.mark.parametrize("codecs", [{"log_probs": "float16", "hidden": "float16"},
                                    {"log_probs": "sampled", "sampled_n": 16, "hidden": "float16"}],
                         ids=["float16", "sampled"])
def test_dump_killed_between_a_shards_data_and_its_flag(codecs, tiny_teacher, tiny_corpus, tmp_path, monkeypatch):
    ref = tmp_path / "ref.zarr"
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, ref, codecs=codecs), **QUIET)
    out = tmp_path / "killed.zarr"
    cfg = dump_cfg(tiny_teacher, tiny_corpus, out, codecs=codecs)
    flags_set = []

    class FlagThenKill:
        """The done-flag array of a split: the third flag is never written (the shard's data and checksums are)."""

        def __init__(self, arr):
            self.arr = arr

        def __setitem__(self, key, value):
            if len(flags_set) == 2:
                raise Killed()
            flags_set.append(key)
            self.arr[key] = value

        def __getitem__(self, key):
            return self.arr[key]

    orig_init = cache_writer.SplitWriter.__init__

    def init(self, *a, **kw):
        orig_init(self, *a, **kw)
        self.done_flags = FlagThenKill(self.done_flags)

    monkeypatch.setattr(cache_writer.SplitWriter, "__init__", init)
    with pytest.raises(Killed):
        dump_teacher.run(cfg, **QUIET)
    monkeypatch.setattr(cache_writer.SplitWriter, "__init__", orig_init)
    assert flags_set == [0, 1]

    res = dump_teacher.run(cfg, **QUIET)
    assert res["resumed"]
    shard_frames = cfg.chunk_frames * cfg.shard_chunks
    total = sum(TeacherCache(str(ref)).split(s).num_frames for s in ("train", "dev"))
    # the rerun wrote everything but the two flagged shards (the third shard's unflagged data is rewritten)
    assert res["frames_written"] == total - 2 * shard_frames
    assert_same_cache(ref, out)


def _noisy(d: dict) -> dict:
    """Dropout and SpecAugment on: a resume that loses the RNG state ends elsewhere."""
    d["model"]["dropout"] = 0.3
    d["augment"] = {"time_masks": 2, "time_mask_width": 3, "freq_masks": 1, "freq_mask_width": 4}
    return d


def _weights(path):
    ck = torch.load(path, weights_only=False)
    return ck["model_state_dict"], ck.get("extra_state_dict") or {}


def _assert_equal_states(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_train_resume_is_exact_with_dropout_and_specaugment(tiny_corpus, tmp_path):
    full = build_dataclass(ExperimentConfig, _noisy(experiment_dict(tiny_corpus, tmp_path / "full", epochs=3)))
    train.run(full, **QUIET)
    cfg = build_dataclass(ExperimentConfig, _noisy(experiment_dict(tiny_corpus, tmp_path / "resumed", epochs=3)))
    killed_after(train.run, cfg, epochs_done=1)
    assert torch.load(tmp_path / "resumed" / "checkpoint_last.pt", weights_only=False)["epoch"] == 1
    train.run(cfg, resume=True, **QUIET)
    _assert_equal_states(_weights(tmp_path / "full" / "checkpoint_last.pt")[0],
                         _weights(tmp_path / "resumed" / "checkpoint_last.pt")[0])


@pytest.fixture(scope="module")
def f16_cache(tiny_teacher, tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("resume_cache") / "c.zarr"
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, out, codecs={"log_probs": "float16", "hidden": "float16"},
                              splits=["train", "untranscribed", "dev"]), **QUIET)
    return out


@pytest.mark.parametrize("extra", [{}, {"untranscribed_splits": ["untranscribed"], "untranscribed_fraction": 0.5,
                                        "kl_frames": "spikes"}], ids=["transcribed", "with-untranscribed"])
def test_train_student_resume_is_exact_including_the_projection_heads(extra, f16_cache, tiny_corpus, tmp_path):
    def cfg(name):
        d = _noisy(experiment_dict(tiny_corpus, tmp_path / name, epochs=3))
        d["distill"] = {"cache": str(f16_cache), "alpha": 0.5, "beta": 0.3, "gamma": 0.2, "seq_weight": 0.1,
                        "temperature_schedule": [[1, 2.0], [2, 1.0]], "layer_mapping": {1: 1, 2: 3}, **extra}
        return build_dataclass(ExperimentConfig, d)
    train_student.run(cfg("full"), **QUIET)
    resumed = cfg("resumed")
    killed_after(train_student.run, resumed, epochs_done=1)
    _, after_one = _weights(tmp_path / "resumed" / "checkpoint_last.pt")
    train_student.run(resumed, resume=True, **QUIET)
    (ma, ea), (mb, eb) = _weights(tmp_path / "full" / "checkpoint_last.pt"), \
        _weights(tmp_path / "resumed" / "checkpoint_last.pt")
    assert ea, "the projection heads were not saved"
    _assert_equal_states(ma, mb)
    _assert_equal_states(ea, eb)
    # the heads kept training after the resume (heads that never change would pass the equality trivially)
    assert all(not torch.equal(after_one[k], eb[k]) for k in eb)


def test_metrics_after_a_mid_epoch_kill_and_resume_are_one_history(tiny_corpus, tmp_path):
    """The killed run's step records past its last checkpoint are dropped on --resume (#13 item 8)."""
    import json
    from offline_kd.training import trainer as tr
    cfg = build_dataclass(ExperimentConfig, experiment_dict(tiny_corpus, tmp_path / "run", epochs=2))
    full = build_dataclass(ExperimentConfig, experiment_dict(tiny_corpus, tmp_path / "full", epochs=2))
    train.run(full, **QUIET)
    steps_per_epoch = sum(1 for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
                          if json.loads(line)["event"] == "step") // 2
    orig = tr.Trainer.log_record

    def log_then_kill(self, record, scalars=None):
        orig(self, record, scalars)
        if record.get("event") == "step" and record["step"] == steps_per_epoch + 3:   # 3 steps into epoch 2
            raise Killed()
    tr.Trainer.log_record = log_then_kill
    try:
        with pytest.raises(Killed):
            train.run(cfg, **QUIET)
    finally:
        tr.Trainer.log_record = orig
    train.run(cfg, resume=True, **QUIET)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if r["event"] == "step"]
    assert steps == list(range(1, 2 * steps_per_epoch + 1))          # each step once, in order
    assert [r["epoch"] for r in rows if r["event"] == "epoch"] == [1, 2]
    ref = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/total"] for r in rows if r["event"] == "step"] == \
        [r["train/total"] for r in ref if r["event"] == "step"]
