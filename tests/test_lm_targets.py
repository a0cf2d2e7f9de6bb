"""LM-rescored pseudo-labels (#17 item 3): the teacher's N-best from a beam search with an n-gram LM, stored at dump
time, sealed with the cache, and used as weighted CTC targets for untranscribed audio (`distill.pseudo_labels: lm`)."""

import json

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from helpers import QUIET, dump_cfg, step_records, student_dict, write_unigram_arpa, write_yaml
from offline_kd.cache.lm_targets import nbest_weights
from offline_kd.cache.reader import TeacherCache
from offline_kd.cli import main
from offline_kd.commands import dump_teacher, train_student
from offline_kd.distillation import dump as dump_module
from offline_kd.config import AUTO_LM_LABELS, DumpConfig, ExperimentConfig, build_dataclass
from offline_kd.data.corpus import Corpus
from offline_kd.data.targets import TeacherTargets
from offline_kd.decoding.beam import BeamSearchDecoder
from offline_kd.errors import OfflineKDError
from offline_kd.losses.kd import ctc_loss, weighted_ctc_loss

LM = {"splits": ["untranscribed"], "nbest": 3, "beam_width": 8, "alpha": 0.5, "beta": 0.5, "num_processes": 1}


@pytest.fixture(scope="module")
def arpa(tiny_corpus, tmp_path_factory):
    words = list(Corpus(tiny_corpus).vocab.tokens[1:])
    return write_unigram_arpa(tmp_path_factory.mktemp("lm") / "lm.arpa", words, (words[0], words[1]))


@pytest.fixture(scope="module")
def lm_cache(tiny_teacher, tiny_corpus, arpa, tmp_path_factory):
    out = tmp_path_factory.mktemp("lmcache") / "lm.zarr"
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, out, splits=["train", "untranscribed"],
                              lm_targets={**LM, "lm": str(arpa)}), **QUIET)
    return out


def test_weighted_ctc_equals_ctc_for_one_target_of_weight_one_and_splits_by_weight():
    torch.manual_seed(0)
    lp = torch.randn(12, 3, 6).log_softmax(-1)
    lengths = torch.tensor([12, 10, 7])
    labels, ll = torch.tensor([1, 2, 3, 2, 4, 5]), torch.tensor([2, 3, 1])
    owner, w = torch.arange(3), torch.ones(3)
    torch.testing.assert_close(weighted_ctc_loss(lp, labels, lengths, ll, owner, w), ctc_loss(lp, labels, lengths, ll))
    # utterance 1 with two targets at 0.25 / 0.75: a weighted mix of the two single-target losses
    lab2 = torch.cat([labels[:5], torch.tensor([5, 5]), labels[5:]])
    got = weighted_ctc_loss(lp, lab2, lengths, torch.tensor([2, 3, 2, 1]), torch.tensor([0, 1, 1, 2]),
                            torch.tensor([1.0, 0.25, 0.75, 1.0]))
    a = ctc_loss(lp, labels, lengths, ll)
    b = ctc_loss(lp, torch.cat([labels[:2], torch.tensor([5, 5]), labels[5:]]), lengths, torch.tensor([2, 2, 1]))
    torch.testing.assert_close(got, 0.25 * a + 0.75 * b)


def test_nbest_weights_are_a_softmax_padded_with_zeros():
    np.testing.assert_allclose(nbest_weights([0.0, np.log(3.0)], 3), [0.25, 0.75, 0.0], rtol=1e-6)
    assert nbest_weights([], 2).tolist() == [0.0, 0.0]


def test_nbest_labels_keep_references_and_expand_untranscribed_utterances():
    t = TeacherTargets(torch.zeros(4, 2, 5), torch.tensor([4, 4]), {}, torch.tensor([3, 3, 1]), torch.tensor([2, 1]),
                       nbest=[None, [(np.array([2, 2]), 0.6), (np.array([4]), 0.4)]])
    labels, ll, owner, w = t.nbest_labels(torch.tensor([1, 2, 9]), torch.tensor([3, 0]), torch.tensor([True, False]))
    assert labels.tolist() == [1, 2, 9, 2, 2, 4] and ll.tolist() == [3, 2, 1]
    assert owner.tolist() == [0, 1, 1] and w.tolist() == pytest.approx([1.0, 0.6, 0.4])
    # no N-best: the greedy targets
    plain = TeacherTargets(t.log_probs, t.lengths, {}, t.tokens, t.token_lengths)
    out = plain.nbest_labels(torch.tensor([1, 2, 9]), torch.tensor([3, 0]), torch.tensor([True, False]))
    assert out[0].tolist() == [1, 2, 9, 1] and out[2] is None
    # lm_1best: the first hypothesis alone, at weight 1
    labels, ll, owner, w = t.nbest_labels(torch.tensor([1, 2, 9]), torch.tensor([3, 0]), torch.tensor([True, False]),
                                          top=1)
    assert labels.tolist() == [1, 2, 9, 2, 2] and ll.tolist() == [3, 2] and owner.tolist() == [0, 1]
    assert w.tolist() == [1.0, 1.0]


def test_lm_confidence_is_the_lm_1best_posterior_and_1_elsewhere():
    from offline_kd.data.targets import lm_confidence
    got = lm_confidence([None, [(np.array([2]), 0.7), (np.array([4]), 0.3)], []], 3)
    assert got.tolist() == pytest.approx([1.0, 0.7, 1.0])
    assert lm_confidence(None, 2).tolist() == [1.0, 1.0]


def test_dump_stores_the_lm_nbest_of_the_cached_log_probs(lm_cache, tiny_corpus, arpa):
    cache = TeacherCache(str(lm_cache))
    split = cache.split("untranscribed")
    assert split.has_lm_nbest and not cache.split("train").has_lm_nbest
    vocab = Corpus(tiny_corpus).vocab
    dec = BeamSearchDecoder(list(vocab.tokens), vocab.tokenizer, vocab.word_separator, str(arpa), 0.5, 0.5, 8)
    positions = [0, len(split) // 2, len(split) - 1]
    lps = [split.read(p)["log_probs"] for p in positions]
    for p, best, beams in zip(positions, dec.decode(lps), dec.decode_nbest(lps, 3)):
        hyps = split.lm_nbest(p)
        assert 1 <= len(hyps) <= 3 and sum(w for _, w in hyps) == pytest.approx(1.0, abs=1e-5)
        assert hyps[0][0].tolist() == vocab.encode(best)            # the first hypothesis is the LM 1-best
        assert [h[0].tolist() for h in hyps] == [vocab.encode(t) for t, _ in beams[:len(hyps)]]
        assert [w for _, w in hyps] == sorted((w for _, w in hyps), reverse=True)


def test_lm_nbest_is_sealed(lm_cache, tmp_path):
    import shutil
    copy = tmp_path / "c.zarr"
    shutil.copytree(lm_cache, copy)
    w = zarr.open_array(str(copy / "untranscribed" / "lm_nbest_weight"), mode="r+")
    w[0, 0] = 0.5
    r = CliRunner().invoke(main, ["cache", "verify", str(copy), "--json"])
    assert r.exit_code != 0 and "untranscribed/lm_nbest_weight: contents differ" in r.output
    r = CliRunner().invoke(main, ["cache", "verify", str(lm_cache), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["ok"]
    r = CliRunner().invoke(main, ["cache", "info", str(lm_cache)])
    assert "split untranscribed: " in r.output and "LM 3-best of every utterance" in r.output


def test_student_on_lm_pseudo_labels_trains_on_them(lm_cache, tiny_corpus, tmp_path):
    def run(out, **kw):
        d = student_dict(tiny_corpus, lm_cache, tmp_path / out, untranscribed_splits=["untranscribed"], **kw)
        train_student.run(build_dataclass(ExperimentConfig, d), **QUIET)
        return [r["train/ctc"] for r in step_records(tmp_path / out)]
    lm, greedy, one = run("lm", pseudo_labels="lm"), run("greedy", pseudo_labels="greedy"), run(
        "one", pseudo_labels="lm_1best")
    assert len(lm) == len(greedy) == len(one) > 5 and all(np.isfinite(lm)) and all(np.isfinite(one))
    assert lm != greedy and one != greedy and one != lm
    # auto: the LM's labels where the cache has them, recorded in the run's config
    assert run("auto", pseudo_labels="auto") == {"lm": lm, "lm_1best": one}[AUTO_LM_LABELS]
    assert f"pseudo_labels: {AUTO_LM_LABELS}" in (tmp_path / "auto" / "config.yaml").read_text()


def test_auto_pseudo_labels_are_greedy_without_an_lm_nbest(tiny_teacher, tiny_corpus, tmp_path):
    from dataclasses import replace
    cfg = _no_lm_cache_cfg(tiny_teacher, tiny_corpus, tmp_path)
    cfg = replace(cfg, distill=replace(cfg.distill, pseudo_labels="auto"), train=replace(cfg.train, epochs=1))
    lines = []
    train_student.run(cfg, log=lines.append)
    assert any("distill.pseudo_labels auto: greedy (split 'untranscribed' of the cache has no LM N-best" in str(x)
               for x in lines)
    assert "pseudo_labels: greedy" in (tmp_path / "y" / "config.yaml").read_text()


def test_lm_pseudo_label_errors(lm_cache, tiny_teacher, tiny_corpus, arpa, tmp_path):
    def cfg(cache, **kw):
        return build_dataclass(ExperimentConfig, student_dict(tiny_corpus, cache, tmp_path / "x", **kw))
    with pytest.raises(OfflineKDError, match="no LM N-best"):
        train_student.run(_no_lm_cache_cfg(tiny_teacher, tiny_corpus, tmp_path), **QUIET)
    with pytest.raises(OfflineKDError, match="untranscribed_splits"):
        train_student.run(cfg(lm_cache, pseudo_labels="lm"), **QUIET)
    with pytest.raises(OfflineKDError, match="`online_teacher`"):
        train_student.run(cfg(lm_cache, pseudo_labels="lm", untranscribed_splits=["untranscribed"]),
                          online_teacher=str(tiny_teacher), **QUIET)
    with pytest.raises(OfflineKDError, match="pseudo_labels must be auto, greedy, lm or lm_1best"):
        cfg(lm_cache, pseudo_labels="beam")
    base = {"splits": ["train", "untranscribed"]}
    for lm, msg in (({**LM, "lm": ""}, "lm_targets.lm"), ({**LM, "lm": "x", "splits": ["dev"]}, "not in dump.splits"),
                    ({**LM, "lm": "x", "nbest": 4, "beam_width": 2}, "must be >= nbest")):
        with pytest.raises(OfflineKDError, match=msg):
            build_dataclass(DumpConfig, {**base, "lm_targets": lm})
    y = write_yaml(tmp_path / "d.yaml", {"dump": {"teacher": str(tiny_teacher), "corpus": str(tiny_corpus),
                                                  "output": str(tmp_path / "c.zarr"), "splits": ["untranscribed"],
                                                  "layers": [1, 3],
                                                  "lm_targets": {"lm": str(tmp_path / "none.arpa"),
                                                                 "splits": ["untranscribed"]}}})
    r = CliRunner().invoke(main, ["dump-teacher", "--config", str(y)])
    assert r.exit_code != 0 and "language model file not found" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "c.zarr").exists()


def _no_lm_cache_cfg(teacher, corpus, tmp_path):
    out = tmp_path / "nolm.zarr"
    dump_teacher.run(dump_cfg(teacher, corpus, out, splits=["train", "untranscribed"]), **QUIET)
    return build_dataclass(ExperimentConfig, student_dict(corpus, out, tmp_path / "y", pseudo_labels="lm",
                                                          untranscribed_splits=["untranscribed"]))


def test_a_dump_stopped_while_decoding_the_lm_nbest_resumes_to_the_same_cache(tiny_teacher, tiny_corpus, arpa,
                                                                             lm_cache, tmp_path, monkeypatch):
    from offline_kd.distillation import pseudo_labels as lm_targets
    real = lm_targets.decode_split
    calls = []

    def dies_on_second_split(split, *a, **k):
        calls.append(split.name)
        if len(calls) == 2:
            raise KeyboardInterrupt            # stopped after the first split's N-best was stored
        return real(split, *a, **k)
    out = tmp_path / "c.zarr"
    cfg = dump_cfg(tiny_teacher, tiny_corpus, out, splits=["train", "untranscribed"],
                   lm_targets={**LM, "lm": str(arpa), "splits": ["train", "untranscribed"]})
    monkeypatch.setattr(lm_targets, "decode_split", dies_on_second_split)
    with pytest.raises(KeyboardInterrupt):
        dump_teacher.run(cfg, **QUIET)
    with pytest.raises(OfflineKDError, match="incomplete"):
        TeacherCache(str(out))                 # not sealed: not usable
    monkeypatch.setattr(lm_targets, "decode_split", real)
    res = dump_teacher.run(cfg, **QUIET)
    assert res["frames_written"] == 0           # the frames were all stored; only the N-best was redone
    cache = TeacherCache(str(out))
    assert cache.split("train").has_lm_nbest and cache.split("untranscribed").has_lm_nbest
    a, b = zarr.open_group(str(out), mode="r"), zarr.open_group(str(lm_cache), mode="r")
    for k in ("untranscribed/lm_nbest_offset", "untranscribed/lm_nbest_tokens", "untranscribed/lm_nbest_weight"):
        np.testing.assert_array_equal(a[k][...], b[k][...])


def _no_teacher(monkeypatch):
    """Make any teacher pass of dump-teacher fail the test."""
    def ran(*a, **k):
        raise AssertionError("the teacher ran")
    monkeypatch.setattr(dump_module, "iterate_outputs", ran)


def _verify_ok(path):
    r = CliRunner().invoke(main, ["cache", "verify", str(path), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["ok"], r.output


@pytest.mark.parametrize("content", [b"\x00\x01 not a language model at all \xff" * 40,
                                     b"\\data\\\nngram 1=3\n\n\\1-grams:\nthis is no arpa entry\n"],
                         ids=["binary-garbage", "broken-arpa"])
def test_a_bad_lm_is_refused_before_the_teacher_runs(tiny_teacher, tiny_corpus, tmp_path, monkeypatch, content):
    """#29 item 5: a file that is not a KenLM model is refused like a missing one, before any teacher pass, naming
    the key and the file, and nothing is left at dump.output."""
    import re
    bad = tmp_path / "bad.arpa"
    bad.write_bytes(content)
    out = tmp_path / "c.zarr"
    _no_teacher(monkeypatch)
    with pytest.raises(OfflineKDError, match=rf"dump\.lm_targets\.lm: .*{re.escape(str(bad))}") as e:
        dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, out, splits=["train", "untranscribed"],
                                  lm_targets={**LM, "lm": str(bad)}), **QUIET)
    assert "\n" not in str(e.value)
    assert not out.exists()
    y = write_yaml(tmp_path / "d.yaml", {"dump": {"teacher": str(tiny_teacher), "corpus": str(tiny_corpus),
                                                  "output": str(out), "splits": ["untranscribed"], "layers": [1, 3],
                                                  "lm_targets": {"lm": str(bad), "splits": ["untranscribed"]}}})
    r = CliRunner().invoke(main, ["dump-teacher", "--config", str(y)])
    assert r.exit_code != 0 and "dump.lm_targets.lm" in r.output and "Traceback" not in r.output
    assert not out.exists()


def test_an_incomplete_dump_reruns_with_other_lm_settings_and_redoes_only_the_nbest(tiny_teacher, tiny_corpus, arpa,
                                                                                     lm_cache, tmp_path, monkeypatch):
    """#29 item 5: a dump stopped in its N-best stage (as one with a bad LM used to be) is finished by a rerun whose
    dump.lm_targets differ (another LM file, other settings): no refusal, no teacher pass, a sealed cache."""
    from offline_kd.distillation import pseudo_labels as lm_targets
    real = lm_targets.decode_split

    def dies(split, *a, **k):
        raise KeyboardInterrupt
    out = tmp_path / "c.zarr"
    monkeypatch.setattr(lm_targets, "decode_split", dies)
    with pytest.raises(KeyboardInterrupt):
        dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, out, splits=["train", "untranscribed"],
                                  lm_targets={**LM, "lm": str(arpa),
                                              "nbest": 2}), **QUIET)
    monkeypatch.setattr(lm_targets, "decode_split", real)
    other = tmp_path / "other.arpa"
    other.write_bytes(arpa.read_bytes())
    _no_teacher(monkeypatch)
    res = dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, out, splits=["train", "untranscribed"],
                                    lm_targets={**LM, "lm": str(other)}), **QUIET)
    assert res["frames_written"] == 0
    cache = TeacherCache(str(out))
    assert cache.meta.dump_config["lm_targets"]["lm"] == str(other)
    assert int(zarr.open_group(str(out), mode="r")["untranscribed"].attrs["lm_nbest"]) == 3
    _verify_ok(out)
    a, b = zarr.open_group(str(out), mode="r"), zarr.open_group(str(lm_cache), mode="r")
    for k in ("untranscribed/lm_nbest_offset", "untranscribed/lm_nbest_tokens", "untranscribed/lm_nbest_weight"):
        np.testing.assert_array_equal(a[k][...], b[k][...])


def test_a_complete_cache_redoes_only_its_nbest_when_only_dump_lm_targets_change(tiny_teacher, tiny_corpus, arpa,
                                                                                 lm_cache, tmp_path, monkeypatch):
    """#29 item 5: changing, adding or removing dump.lm_targets on a complete cache redoes the N-best stage alone
    and seals the cache again; any other change is still refused."""
    import shutil
    out = tmp_path / "c.zarr"
    shutil.copytree(lm_cache, out)
    _no_teacher(monkeypatch)
    splits = ["train", "untranscribed"]

    def dump(lm):
        return dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, out, splits=splits, lm_targets=lm), **QUIET)
    res = dump({**LM, "lm": str(arpa), "nbest": 2, "alpha": 1.0, "splits": splits})
    assert res["frames_written"] == 0
    cache = TeacherCache(str(out))
    assert cache.split("train").has_lm_nbest and cache.split("untranscribed").has_lm_nbest
    assert int(zarr.open_group(str(out), mode="r")["untranscribed"].attrs["lm_nbest"]) == 2
    _verify_ok(out)
    res = dump(None)                                    # no N-best any more: the arrays go
    cache = TeacherCache(str(out))
    assert not cache.split("train").has_lm_nbest and not cache.split("untranscribed").has_lm_nbest
    g = zarr.open_group(str(out), mode="r")
    assert "lm_nbest" not in g["untranscribed"].attrs and "lm_nbest_offset" not in g["untranscribed"]
    _verify_ok(out)
    res = dump({**LM, "lm": str(arpa)})                 # back to the original settings: the original cache
    assert res["frames_written"] == 0
    a, b = zarr.open_group(str(out), mode="r"), zarr.open_group(str(lm_cache), mode="r")
    assert a.attrs["offline_kd"]["identity_sha256"] == b.attrs["offline_kd"]["identity_sha256"]
    for k in ("untranscribed/lm_nbest_offset", "untranscribed/lm_nbest_tokens", "untranscribed/lm_nbest_weight"):
        np.testing.assert_array_equal(a[k][...], b[k][...])
    assert "lm_nbest_offset" not in a["train"]
    _verify_ok(out)
    assert dump({**LM, "lm": str(arpa)})["frames_written"] == 0           # the same config: nothing to do
    with pytest.raises(OfflineKDError, match="another teacher, corpus or dump config"):
        dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, out, splits=splits, batch_size=4,
                                  lm_targets={**LM, "lm": str(arpa), "nbest": 2}), **QUIET)
