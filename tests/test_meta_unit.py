"""CacheMeta on hand-made metadata (no teacher, fast enough for mutmut): what enters a cache's resume identity."""

from __future__ import annotations

import dataclasses

from offline_kd.cache.meta import CacheMeta


def _meta(**extra) -> CacheMeta:
    dump = {"layers": [1], "batch_size": 4, "max_frames_per_batch": None, "chunk_frames": 8, "shard_chunks": 2,
            "skip_invalid": False, "codecs": {"log_probs": "float32"}, "splits": ["train"]}
    return CacheMeta.from_dict({
        "format_version": 2, "tool_version": "0", "complete": True, "created": "2026-01-01T00:00:00+00:00",
        "teacher": {"path": "t.pt", "sha256": "s", "weights_sha256": "w", "model_config": {}},
        "vocab": {}, "vocab_sha256": "v", "corpus": "c", "subsampling": 2, "num_classes": 5, "layers": {"1": 4},
        "codecs": {}, "chunk_frames": 8, "shard_frames": 16, "splits": ["train"], "device_type": "cpu",
        "dump_config": dump, **extra})


def test_the_front_end_enters_a_cache_identity_only_when_the_corpus_has_one():
    """A corpus imported from audio records its front end in the cache's metadata and identity; caches of corpora
    without one (.npy imports, synth, every cache written before) keep their identity."""
    plain = _meta()
    fe = {"kind": "kaldi-fbank", "num_mel_bins": 80, "cmvn": {"kind": "none"}}
    with_fe = _meta(frontend=fe)
    assert "frontend" not in plain.extra and with_fe.extra["frontend"] == fe
    assert with_fe.identity({}) != plain.identity({})
    assert _meta(frontend={}).identity({}) == plain.identity({})
    other = _meta(frontend={**fe, "cmvn": {"kind": "global"}})
    assert other.identity({}) != with_fe.identity({})
    assert with_fe.to_dict()["frontend"] == fe and "frontend" not in plain.to_dict()
    assert dataclasses.replace(with_fe, extra={}).identity({}) == plain.identity({})


def test_for_dump_records_the_front_end_it_is_given():
    from offline_kd.config import DumpConfig, build_dataclass

    class Model:
        subsampling, num_classes, model_type = 2, 5, "bilstm"

        def describe(self):
            return {}

    class Codec:
        dim = 4

        def to_dict(self):
            return {"name": "float32"}

    class Vocab:
        sha256 = "v"

        def to_dict(self):
            return {}

    cfg = build_dataclass(DumpConfig, {"teacher": "t.pt", "corpus": "c", "output": "o.zarr"})
    fe = {"kind": "kaldi-fbank"}
    a = CacheMeta.for_dump(cfg, Model(), Vocab(), "c", Codec(), {1: Codec()}, "cpu", "s", "w", "0", frontend=fe)
    b = CacheMeta.for_dump(cfg, Model(), Vocab(), "c", Codec(), {1: Codec()}, "cpu", "s", "w", "0")
    assert a.extra == {"frontend": fe} and b.extra == {}
    assert a.identity({}) != b.identity({})
    assert b.teacher == {"path": "t.pt", "sha256": "s", "weights_sha256": "w", "model_config": {}}
    # dump.subsampling is left out of the stored config while null (caches keep their metadata bytes), kept when set
    assert "subsampling" not in b.dump_config and "storage_options" not in b.dump_config
    s4 = build_dataclass(DumpConfig, {"teacher": "t.pt", "corpus": "c", "output": "o.zarr", "subsampling": 4})
    assert CacheMeta.for_dump(s4, Model(), Vocab(), "c", Codec(), {1: Codec()}, "cpu", "s", "w",
                              "0").dump_config["subsampling"] == 4
    record = {"path": "entry_point:m:load", "sha256": "spec", "adapter": "entry_point", "entry_point": "m:load",
              "args": {"a": 1}}
    c = CacheMeta.for_dump(cfg, Model(), Vocab(), "c", Codec(), {1: Codec()}, "cpu", "spec", "w", "0",
                           teacher_record=record)
    assert c.teacher == {"path": "entry_point:m:load", "sha256": "spec", "weights_sha256": "w", "model_config": {},
                         "adapter": "entry_point", "entry_point": "m:load", "args": {"a": 1}}
    assert list(c.teacher)[:4] == ["path", "sha256", "weights_sha256", "model_config"]   # the old keys first


def test_a_teachers_alignment_and_an_hf_directory_enter_the_identity():
    """An aligned teacher's mapping and frames, and a Hugging Face teacher's directory hash (its config and
    preprocessing, not only its weights), decide whether a cache resumes; a checkpoint's file hash does not."""
    plain = _meta()
    teacher = plain.teacher
    def with_teacher(**t):
        return dataclasses.replace(plain, teacher={**teacher, **t})
    a = with_teacher(alignment={"vocabulary": {"sha256": "x"}, "frames": {"pool": 1}})
    b = with_teacher(alignment={"vocabulary": {"sha256": "y"}, "frames": {"pool": 1}})
    c = with_teacher(alignment={"vocabulary": {"sha256": "x"}, "frames": {"pool": 2}})
    assert len({plain.identity({}), a.identity({}), b.identity({}), c.identity({})}) == 4
    hf1 = with_teacher(adapter="huggingface", sha256="d1", sha256_in_identity=True)
    hf2 = with_teacher(adapter="huggingface", sha256="d2", sha256_in_identity=True)
    assert hf1.identity({}) != hf2.identity({}) and hf1.identity({}) != plain.identity({})
    # a Hugging Face cache stored before sources said so themselves reads with the flag its source now sets
    old = CacheMeta.from_dict({**hf1.to_dict(), "teacher": {k: v for k, v in hf1.teacher.items()
                                                             if k != "sha256_in_identity"}})
    assert old.identity({}) == hf1.identity({})
    assert with_teacher(sha256="other").identity({}) == plain.identity({})
    assert with_teacher(adapter="entry_point", sha256="d1").identity({}) == plain.identity({})


class _Plan:
    def __init__(self, ids):
        self.utterance_ids, self.hashes = ids, [f"h{u}" for u in ids]


def _cached(splits: dict, lm: dict | None = None) -> tuple[CacheMeta, dict]:
    """(the meta of a dump of `splits` {name: ids}, the metadata stored for it)."""
    dump = {**_meta().dump_config, "splits": list(splits), **({"lm_targets": lm} if lm else {})}
    m = dataclasses.replace(_meta(), dump_config=dump, splits=list(splits))
    plans = {s: _Plan(ids) for s, ids in splits.items()}
    return m, {**m.with_identity(plans).to_dict(), "splits": list(splits)}


def test_added_splits_are_those_a_dump_adds_to_an_otherwise_identical_cache():
    """#45 item 9: a dump of more splits than a cache of the same teacher, corpus and settings extends it; any other
    change (a cached split's utterances, a setting, the teacher, a split removed, nothing added) does not."""
    _, old = _cached({"train": ["a", "b"], "dev": ["c"]})
    new, _ = _cached({"train": ["a", "b"], "dev": ["c"], "untranscribed": ["x"]})
    plans = {"train": _Plan(["a", "b"]), "dev": _Plan(["c"]), "untranscribed": _Plan(["x"])}
    assert new.added_splits(old, plans) == ["untranscribed"]
    assert new.added_splits(old, {"train": _Plan(["a", "b"]), "dev": _Plan(["c"])}) == []          # nothing added
    assert new.added_splits(old, {**plans, "train": _Plan(["a", "z"])}) == []                     # utterances differ
    assert new.added_splits(old, {"train": _Plan(["a", "b"]), "untranscribed": _Plan(["x"])}) == []   # dev dropped
    other = dataclasses.replace(new, dump_config={**new.dump_config, "layers": [2]})
    assert other.added_splits(old, plans) == []                                                   # a setting differs
    teacher = dataclasses.replace(new, teacher={**new.teacher, "weights_sha256": "w2"})
    assert teacher.added_splits(old, plans) == []                                                 # another teacher
    assert new.added_splits({**old, "splits": []}, plans) == []


def test_added_splits_with_lm_targets_may_name_only_the_new_splits_anew():
    lm = {"lm": "4gram.bin", "nbest": 4, "splits": ["dev"]}
    _, old = _cached({"train": ["a"], "dev": ["c"]}, lm)
    plans = {"train": _Plan(["a"]), "dev": _Plan(["c"]), "untranscribed": _Plan(["x"])}

    def dump(lm_targets):
        m, _ = _cached({"train": ["a"], "dev": ["c"], "untranscribed": ["x"]}, lm_targets)
        return m
    assert dump({**lm, "splits": ["dev", "untranscribed"]}).added_splits(old, plans) == ["untranscribed"]
    assert dump(lm).added_splits(old, plans) == ["untranscribed"]
    assert dump({**lm, "splits": ["untranscribed"]}).added_splits(old, plans) == []    # dev's N-best dropped
    assert dump({**lm, "nbest": 2, "splits": ["dev", "untranscribed"]}).added_splits(old, plans) == []
    assert dump(None).added_splits(old, plans) == []
    _, plain = _cached({"train": ["a"], "dev": ["c"]})
    assert dump(lm).added_splits(plain, plans) == []
