"""A sealed cache extended with a split it lacks (#45 item 9): the teacher runs on the new split only, the cached
splits stay byte for byte, and the result is the cache one dump of all the splits makes, sealed again; with the LM
N-best, the new split's is decoded and the old ones' kept. A cache that differs in more than its splits is still
refused, naming what differs."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from helpers import QUIET, dump_cfg, write_unigram_arpa
from offline_kd.cache.reader import TeacherCache
from offline_kd.cache.verify import verify_cache
from offline_kd.commands import dump_teacher
from offline_kd.data.corpus import Corpus
from offline_kd.errors import OfflineKDError

LM = {"nbest": 2, "beam_width": 8, "alpha": 0.5, "beta": 0.5, "num_processes": 1}


def arrays(path, split):
    g = zarr.open_group(str(path), mode="r")[split]
    return {name: node[:] for name, node in g.members(max_depth=None) if hasattr(node, "shape")}


def test_adding_a_split_runs_the_teacher_on_it_only_and_equals_one_dump_of_all(tiny_teacher, tiny_corpus, tmp_path,
                                                                               monkeypatch):
    words = list(Corpus(tiny_corpus).vocab.tokens[1:])
    arpa = str(write_unigram_arpa(tmp_path / "lm.arpa", words, (words[0], words[1])))
    cache, once = tmp_path / "grown.zarr", tmp_path / "once.zarr"
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, cache, splits=["train", "dev"],
                              lm_targets={**LM, "lm": arpa, "splits": ["dev"]}), **QUIET)
    before = {s: arrays(cache, s) for s in ("train", "dev")}
    from offline_kd.distillation import dump as dump_module
    seen = []
    real = dump_module._dump_split

    def spy(cfg, g, *a, **k):
        out = real(cfg, g, *a, **k)
        seen.append((g.basename, out["utterances"]))
        return out
    monkeypatch.setattr(dump_module, "_dump_split", spy)
    logs = []
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, cache, splits=["train", "dev", "untranscribed"],
                              lm_targets={**LM, "lm": arpa, "splits": ["dev", "untranscribed"]}), log=logs.append)
    assert any("adding split(s) untranscribed" in m for m in logs)
    assert [s for s, n in seen if n] == ["untranscribed"]          # the teacher ran on the new split only
    monkeypatch.setattr(dump_module, "_dump_split", real)
    for s in ("train", "dev"):
        for k, v in before[s].items():
            np.testing.assert_array_equal(arrays(cache, s)[k], v, err_msg=f"{s}/{k}")
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, once, splits=["train", "dev", "untranscribed"],
                              lm_targets={**LM, "lm": arpa, "splits": ["dev", "untranscribed"]}), **QUIET)
    for s in ("train", "dev", "untranscribed"):
        a, b = arrays(cache, s), arrays(once, s)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{s}/{k}")
    grown = TeacherCache(str(cache))
    assert grown.meta.complete and grown.splits == ["train", "dev", "untranscribed"]
    assert grown.split("untranscribed").has_lm_nbest
    report = verify_cache(str(cache))
    assert report["ok"], report


def test_a_cache_that_differs_in_more_than_its_splits_is_refused_naming_it(tiny_teacher, tiny_corpus, tmp_path):
    cache = tmp_path / "c.zarr"
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, cache, splits=["train"]), **QUIET)
    with pytest.raises(OfflineKDError, match="dump settings differ: layers"):
        dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, cache, splits=["train", "dev"], layers=[1]), **QUIET)


def test_an_optional_split_is_cached_where_the_corpus_has_it(tiny_teacher, tiny_corpus, tmp_path):
    """dump.splits [train, "untranscribed?", dev] (the shipped dump configs'): cached where the corpus has the
    split, left out (with its dump.lm_targets) where it has not."""
    from offline_kd.config import DumpConfig, build_dataclass, present_splits
    cache = tmp_path / "c.zarr"
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, cache, splits=["train", "untranscribed?", "dev"]), **QUIET)
    c = TeacherCache(str(cache))
    assert c.splits == ["train", "untranscribed", "dev"] and c.meta.dump_config["splits"] == c.splits
    cfg = build_dataclass(DumpConfig, {"splits": ["train", "untranscribed?", "dev"],
                                       "lm_targets": {"lm": "x.arpa", "splits": ["untranscribed"]}})
    without = present_splits(cfg, ["train", "dev", "test"])
    assert without.splits == ["train", "dev"] and without.lm_targets is None
    assert present_splits(cfg, ["train", "untranscribed", "dev"]).lm_targets.splits == ["untranscribed"]
