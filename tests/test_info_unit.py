"""`cache info`'s text on a hand-made info record (no teacher; fast enough for mutmut): the teacher's source and the
corpus's front end."""

from __future__ import annotations

from offline_kd.cache.info import format_info


def _info(**kw) -> dict:
    base = {"path": "c.zarr", "complete": True, "format_version": 2, "tool_version": "0", "created": "now",
            "teacher_path": "runs/t.pt", "teacher_sha256": "a" * 64, "vocab_sha256": "b" * 64,
            "identity_sha256": "c" * 64, "num_classes": 5, "layers": {"1": 4}, "subsampling": 2,
            "codecs": {"log_probs": {"name": "float32"}, "hidden": {"1": {"name": "float32"}}, "compressor": "zstd",
                       "level": 3},
            "utterances": 1, "frames": 2, "bytes_total": 10, "splits": {}, "bytes_per_frame": {},
            "target_bytes_per_frame": 1.0, "ratio_to_float32": 0.5, "float32_bytes_per_frame": 2}
    return {**base, **kw}


def _legacy_name(teacher: dict) -> str:
    from types import SimpleNamespace
    from offline_kd.cache.meta import CacheMeta
    return CacheMeta.teacher_name.fget(SimpleNamespace(teacher=teacher))


def test_the_teacher_is_named_by_its_record_and_older_records_by_their_path():
    assert _legacy_name({"path": "runs/t.pt", "name": "checkpoint runs/t.pt"}) == "checkpoint runs/t.pt"
    assert _legacy_name({"path": "runs/t.pt"}) == "checkpoint runs/t.pt"
    assert _legacy_name({"path": "entry_point:m.t:load", "adapter": "entry_point"}) == \
        "entry point m.t:load (args in the cache's metadata)"
    assert _legacy_name({"path": "models/w2v", "adapter": "huggingface"}) == "Hugging Face model models/w2v"


def test_the_teacher_source_and_the_front_end_are_printed():
    plain = format_info(_info(teacher_name=_legacy_name({"path": "runs/t.pt"}))).splitlines()
    assert "  teacher: checkpoint runs/t.pt" in plain and not any("front end" in x for x in plain)
    fe = {"kind": "kaldi-fbank", "num_mel_bins": 80, "frame_length_ms": 25.0, "frame_shift_ms": 10.0,
          "sample_rate": 16000, "cmvn": {"kind": "global"}}
    lines = format_info(_info(teacher_name=_legacy_name({"path": "entry_point:m.t:load"}),
                              frontend=fe)).splitlines()
    assert "  teacher: entry point m.t:load (args in the cache's metadata)" in lines
    i = lines.index("  corpus front end: kaldi-fbank 80 bins, 25.0 / 10.0 ms at 16000 Hz, cmvn global")
    assert lines[i + 1].startswith("  1 utterances, 2 frames")
    no_cmvn = format_info(_info(frontend={**fe, "cmvn": None}))
    assert "cmvn none" in no_cmvn


def test_an_ensembles_members_are_listed_with_weight_dev_wer_and_coverage():
    from offline_kd.cache.info import _members
    assert _members({"adapter": "checkpoint", "path": "t.pt"}) is None
    teacher = {"adapter": "ensemble", "weights": [0.25, 0.75],
               "members": [{"path": "a.pt", "name": "checkpoint a.pt", "dev": {"wer": 4.125}}, {"path": "b.pt"}]}
    members = _members(teacher)
    assert members == [{"name": "checkpoint a.pt", "weight": 0.25, "dev": {"wer": 4.125}},
                       {"name": "b.pt", "weight": 0.75, "dev": None}]
    cov = {"members": [None, {"dropped_mass": {"mean": 0.01, "utterances": 3, "worst": 0.02,
                                               "worst_utterance": "u1"}}]}
    lines = format_info(_info(teacher_name="ensemble of 2 teachers", teacher_members=members,
                              teacher_coverage=cov)).splitlines()
    i = lines.index("  teacher: ensemble of 2 teachers")
    assert lines[2:5] == ["  teacher 1: checkpoint a.pt, weight 0.250, dev WER 4.12%",
                          "  teacher 2: b.pt, weight 0.750",
                          "  teacher probability on dropped classes: mean 1.00% over 3 utterances, worst 2.00% (u1)"]
    assert i == 1 and lines[5].startswith("  teacher sha256")


def test_the_teacher_dev_line_names_where_its_figures_come_from():
    from offline_kd.cache.info import _dev_line
    ckpt = {"wer": 4.0, "cer": 2.0, "epoch": 7, "split": "dev", "corpus": "data/demo"}
    cached = {"wer": 4.5, "cer": 2.5, "split": "dev", "corpus": "data/demo", "utterances": 150}
    assert _dev_line(None, None) == "figures not recorded"
    assert _dev_line(ckpt, None) == "WER 4.00% CER 2.00% (epoch 7, dev of data/demo)"
    assert _dev_line(ckpt, cached) == ("WER 4.00% CER 2.00% (epoch 7, dev of data/demo); the cached dev split's "
                                       "1-best: WER 4.50% CER 2.50%")
    assert _dev_line(cached, cached) == "WER 4.50% CER 2.50% (greedy, the cached 1-best of dev of data/demo)"
