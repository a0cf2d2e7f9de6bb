"""`cache info`'s text on a hand-made info record (no teacher; fast enough for mutmut): the teacher's source and the
corpus's front end."""

from __future__ import annotations

from offline_kd.cache.info import _dev_line, format_info


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


def test_the_whole_text_with_every_optional_part_and_without_them():
    full = _info(
        complete=True, teacher_name="checkpoint runs/t.pt", teacher_precision="bf16", device_type="cuda",
        teacher_sha256="0123456789abcdefXYZ", vocab_sha256="fedcba9876543210XYZ", identity_sha256="1111222233334444XYZ",
        codecs={"log_probs": {"name": "topk", "k": 8, "tail": "lowrank", "dim": 5, "num_classes": 5},
                "hidden": {"1": {"name": "float16"}, "2": {"name": "int8"}}, "compressor": "zstd", "level": 3},
        teacher_dev={"wer": 4.5, "cer": 2.25, "epoch": 3, "corpus": "d", "split": "dev"},
        teacher_cached_dev={"wer": 5.5, "cer": 3.25, "split": "dev", "corpus": "d"},
        bytes_total=999_999_999_999, codebook_relative_error={"2": 0.25, "1": 0.125},
        teacher_alignment={"vocabulary": {"kind": "mapped", "counts": {"same": 3, "case_folded": 1},
                                          "unreached": ["x", "y"], "mapping_file": "m.yaml"},
                           "frames": {"teacher_frame_shift": 2, "student_frame_shift": 4, "unit": "feature frames",
                                      "posteriors": "P", "hidden": "mean", "lengths": "L"}},
        teacher_coverage={"unreached_in_transcripts": {"x": 2, "y": 1},
                          "dropped_mass": {"mean": 0.0125, "utterances": 3, "worst": 0.5, "worst_utterance": "u9"}},
        frontend={"kind": "kaldi-fbank", "num_mel_bins": 80, "frame_length_ms": 25.0, "frame_shift_ms": 10.0,
                  "sample_rate": 16000, "cmvn": {"kind": "utterance"}},
        splits={"train": {"utterances_done": 2, "utterances": 3, "frames": 7, "complete": False, "lm_nbest": 4,
                          "confidence": {"p10": 0.1, "p50": 0.5, "p90": 0.9},
                          "member_confidence": [{"p50": 0.25}, {"p50": 0.75}]},
                "dev": {"utterances_done": 1, "utterances": 1, "frames": 2, "complete": True}},
        views={"views": [{"speed": 1.1}, {"noise": 10}], "splits": ["train", "untranscribed"], "seed": 7},
        bytes_per_frame={"log_probs": 12.25, "best_path": 0.5}, target_bytes_per_frame=12.75, ratio_to_float32=0.0125,
        float32_bytes_per_frame=1020)
    full_text = format_info(full).splitlines()
    assert full_text == [
        "cache c.zarr  (complete, format v2, offline-kd 0, created now)",
        "  teacher: checkpoint runs/t.pt",
        "  vocabulary alignment: mapped (3 same, 1 case folded); student tokens no teacher class reaches (2): 'x', "
        "'y'; mapping file m.yaml",
        "  frame alignment: teacher frame shift 2, student 4 feature frames: posteriors P, hidden mean; lengths L",
        "  unreached tokens the transcripts use (dumped with dump.allow_unreached): 'x' 2x, 'y' 1x",
        "  teacher probability on dropped classes: mean 1.25% over 3 utterances, worst 50.00% (u9)",
        "  teacher sha256 0123456789abcdef  vocab sha256 fedcba9876543210  identity 1111222233334444",
        "  classes 5, layers {'1': 4}, subsampling 2; teacher forward bf16 on cuda",
        "  teacher dev " + _dev_line(full["teacher_dev"], full["teacher_cached_dev"]),
        "  codecs: log_probs topk (k 8, tail lowrank); hidden {1: float16, 2: int8}; compressor zstd level 3",
        "  codebook reconstruction error (relative, sum (x - x')^2 / sum x^2 on the fit sample): layer 1 0.1250, "
        "layer 2 0.2500",
        "  corpus front end: kaldi-fbank 80 bins, 25.0 / 10.0 ms at 16000 Hz, cmvn utterance",
        "  1 utterances, 2 frames, 1000000.00 MB on disk",
        "  split train: 2/3 utterances, 7 frames (incomplete); LM 4-best of every utterance; teacher confidence p10 "
        "0.100 median 0.500 p90 0.900; each teacher's confidence in that 1-best, median 0.250 / 0.750",
        "  split dev: 1/1 utterances, 2 frames",
        "  views of train, untranscribed (split@k), seed 7: 0: {'speed': 1.1}; 1: {'noise': 10}",
        "  bytes per frame:",
        "    best_path               0.5",
        "    log_probs              12.2",
        "  targets 12.8 B/frame = 1.25% of float32 (1020 B/frame)"]
    assert _dev_line(full["teacher_dev"], None) == "WER 4.50% CER 2.25% (epoch 3, dev of d)"
    assert "; the cached dev split's 1-best: WER 5.50% CER 3.25%" in full_text[8]
    plain = dict(full["teacher_alignment"], vocabulary={"kind": "identity", "counts": {"same": 5}})
    assert format_info({**full, "teacher_alignment": plain}).splitlines()[2] == "  vocabulary alignment: identity (5 same)"
    bare = format_info(_info(complete=False)).splitlines()
    assert bare[0] == "cache c.zarr  (INCOMPLETE, format v2, offline-kd 0, created now)"
    assert bare[3] == "  classes 5, layers {'1': 4}, subsampling 2; teacher forward fp32 on ?"
    assert bare[5:] == ["  codecs: log_probs float32; hidden {1: float32}; compressor zstd level 3",
                        "  1 utterances, 2 frames, 0.00 MB on disk", "  bytes per frame:",
                        "  targets 1.0 B/frame = 50.00% of float32 (2 B/frame)"]


def test_an_ensemble_without_member_coverage_is_printed_without_it():
    members = [{"name": "a.pt", "weight": 0.5, "dev": None}, {"name": "b.pt", "weight": 0.5, "dev": None}]
    lines = format_info(_info(teacher_name="ensemble of 2 teachers", teacher_members=members)).splitlines()
    assert lines[2:4] == ["  teacher 1: a.pt, weight 0.500", "  teacher 2: b.pt, weight 0.500"]
