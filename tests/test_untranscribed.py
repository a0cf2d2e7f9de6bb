"""Untranscribed audio (#17 item 1): corpora hold it, the teacher caches it, train-student trains on the teacher's
1-best for it, and validation never sees it."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from helpers import QUIET, dump_cfg, offline_and_online_steps, student_dict, tiny_spec
from offline_kd.cli import main
from offline_kd.commands import dump_teacher, train_student
from offline_kd.config import ExperimentConfig, build_dataclass
from offline_kd.data.corpus import Corpus
from offline_kd.data.sampler import SortedRunBatchSampler
from offline_kd.data.synth import write_synth_corpus
from offline_kd.data.targets import TeacherTargets
from offline_kd.errors import OfflineKDError


@pytest.fixture(scope="module")
def u_cache(tiny_teacher, tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("ucache") / "u.zarr"
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, out, splits=["train", "untranscribed", "dev"]), **QUIET)
    return out


def test_synth_untranscribed_split_leaves_the_others_unchanged(tiny_corpus, tmp_path):
    write_synth_corpus(tmp_path / "plain", tiny_spec(), **QUIET)
    with_u, plain = Corpus(tiny_corpus), Corpus(tmp_path / "plain")
    u = with_u.split("untranscribed")
    assert not u.transcribed and len(u) == 48 and set(u.transcripts) == {""}
    for name in ("train", "dev", "test"):
        a, b = with_u.split(name), plain.split(name)
        assert a.transcribed and a.utterance_ids == b.utterance_ids and a.transcripts == b.transcripts
        assert a.all_feature_hashes() == b.all_feature_hashes()
    assert not (tmp_path / "plain" / "untranscribed.h5").exists()
    # untranscribed audio of further speakers: the other splits are still the same bytes
    write_synth_corpus(tmp_path / "more", tiny_spec(num_untranscribed=20, untranscribed_speakers=3,
                                                     num_lm_sentences=5), **QUIET)
    more = Corpus(tmp_path / "more")
    spk = {int(u.rsplit("spk", 1)[1]) for u in more.split("untranscribed").utterance_ids}
    assert spk <= {2, 3, 4} and len(spk) > 1                   # tiny_spec has speakers 0 and 1
    for name in ("train", "dev", "test"):
        assert more.split(name).all_feature_hashes() == plain.split(name).all_feature_hashes()
    lm = (tmp_path / "more" / "lm_train.txt").read_text().splitlines()
    assert len(lm) == 96 + 5 and lm[:96] == plain.split("train").transcripts


def test_import_rows_without_text_make_an_untranscribed_split(tmp_path):
    (tmp_path / "f").mkdir()
    rows = []
    for i in range(5):
        np.save(tmp_path / "f" / f"u{i}.npy", np.full((6, 3), i, np.float32))
        rows.append({"id": f"u{i}", "features": f"f/u{i}.npy", "split": "train" if i < 3 else "extra",
                     **({"text": "a b"} if i < 3 else {} if i == 3 else {"text": None})})
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    res = CliRunner().invoke(main, ["data", "import", "--manifest", str(tmp_path / "m.jsonl"), "--out",
                                    str(tmp_path / "c"), "--tokenizer", "word"])
    assert res.exit_code == 0, res.output
    c = Corpus(tmp_path / "c")
    assert c.split("train").transcribed and not c.split("extra").transcribed
    assert c.split("extra").utterance_ids == ["u3", "u4"]
    # TSV: two fields, or an empty text field
    (tmp_path / "m.tsv").write_text("u0\tf/u0.npy\ta\ttrain\nu1\tf/u1.npy\t\tx\nu2\tf/u2.npy\n")
    res = CliRunner().invoke(main, ["data", "import", "--manifest", str(tmp_path / "m.tsv"), "--out",
                                    str(tmp_path / "t"), "--tokenizer", "word", "--split", "u"])
    assert res.exit_code == 1 and "split 'u': 2 of 3 rows have no text (first: u1)" in res.output
    assert not (tmp_path / "t").exists()


def test_import_failure_in_a_later_split_leaves_nothing(tmp_path):
    """#13 item 4: the corpus appears whole or not at all."""
    (tmp_path / "f").mkdir()
    np.save(tmp_path / "f" / "a.npy", np.zeros((6, 3), np.float32))
    (tmp_path / "m.tsv").write_text("a\tf/a.npy\thello\ttrain\nb\tf/missing.npy\thello\tdev\n")
    res = CliRunner().invoke(main, ["data", "import", "--manifest", str(tmp_path / "m.tsv"), "--out",
                                    str(tmp_path / "c"), "--tokenizer", "word"])
    assert res.exit_code == 1 and "utterance b" in res.output and "missing.npy" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "m.tsv"]     # no corpus, no temporary directory
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep.txt").write_text("mine")
    res = CliRunner().invoke(main, ["data", "import", "--manifest", str(tmp_path / "m.tsv"), "--out",
                                    str(tmp_path / "c"), "--tokenizer", "word"])
    assert res.exit_code == 1 and "not empty" in res.output
    assert (tmp_path / "c" / "keep.txt").read_text() == "mine"


def test_untranscribed_split_refused_where_transcripts_are_needed(tiny_corpus, tiny_teacher, tmp_path):
    from helpers import experiment_dict
    from offline_kd.commands import train
    d = experiment_dict(tiny_corpus, tmp_path / "t", epochs=1)
    d["data"]["train_split"] = "untranscribed"
    with pytest.raises(OfflineKDError, match="untranscribed.h5 is a split of untranscribed audio; "
                                             "data.train_split 'untranscribed' needs transcripts"):
        train.run(build_dataclass(ExperimentConfig, d), **QUIET)
    assert not (tmp_path / "t").exists()
    res = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(tiny_teacher), "--corpus", str(tiny_corpus),
                                    "--split", "untranscribed"])
    assert res.exit_code == 1 and "WER evaluation needs transcripts" in res.output


def test_hard_labels_take_the_teachers_best_for_unlabelled_utterances():
    t = TeacherTargets(torch.zeros(4, 3, 5), torch.tensor([4, 4, 4]), {}, torch.tensor([7, 8, 9, 9]),
                       torch.tensor([1, 0, 3]))
    labels, lengths = t.hard_labels(torch.tensor([1, 2, 3, 4, 5]), torch.tensor([2, 2, 1]),
                                    torch.tensor([True, False, False]))
    assert labels.tolist() == [1, 2, 8, 9, 9] and lengths.tolist() == [2, 0, 3]
    same = t.hard_labels(torch.tensor([1, 2]), torch.tensor([1, 1, 0]), torch.tensor([True, True, True]))
    assert same[0].tolist() == [1, 2] and same[1].tolist() == [1, 1, 0]


def test_sampler_draws_a_fresh_fraction_of_the_untranscribed_each_epoch():
    lengths = np.arange(10, 40)
    sampled = np.arange(30) >= 10
    s = SortedRunBatchSampler(lengths, np.arange(30), 4, seed=1, sampled=sampled, sampled_fraction=0.5)
    seen = []
    for epoch in (0, 1):
        s.set_epoch(epoch)
        used = sorted(i for b in s.batches() for i in b)
        assert [i for i in used if i < 10] == list(range(10))       # every transcribed utterance, every epoch
        seen.append([i for i in used if i >= 10])
        assert len(seen[-1]) == 10
    assert seen[0] != seen[1]
    s2 = SortedRunBatchSampler(lengths, np.arange(30), 4, seed=1, sampled=sampled, sampled_fraction=0.5)
    s2.set_epoch(1)
    assert sorted(i for b in s2.batches() for i in b if i >= 10) == seen[1]


def test_offline_equals_online_with_untranscribed_split(u_cache, tiny_teacher, tiny_corpus, tmp_path):
    opts = dict(untranscribed_splits=["untranscribed"], untranscribed_fraction=0.5, seq_weight=0.0)
    off = build_dataclass(ExperimentConfig, student_dict(tiny_corpus, u_cache, tmp_path / "off", **opts))
    on = build_dataclass(ExperimentConfig, student_dict(tiny_corpus, u_cache, tmp_path / "on", **opts))
    a, b = offline_and_online_steps(off, on, tiny_teacher)
    # 96 transcribed + 24 of 48 untranscribed per epoch, batches of 8: 15 steps per epoch (+1 for the shifted cut)
    assert len(a) == len(b) and 30 <= len(a) <= 32
    for x, y in zip(a, b):
        for k in ("train/soft", "train/ctc", "train/feature", "train/total"):
            assert x[k] == pytest.approx(y[k], rel=1e-4, abs=1e-6), (x["step"], k)


def test_untranscribed_utterances_train_on_the_teachers_best(u_cache, tiny_corpus):
    """CTC term of a batch of untranscribed utterances == CTC against the teacher's collapsed argmax path."""
    from offline_kd.cache.reader import TeacherCache
    from offline_kd.data.distill_dataset import DistillBatchDataset
    from offline_kd.losses.kd import ctc_loss
    from offline_kd.losses.modules import StudentLoss
    from offline_kd.models.augment import SpecAugment
    from offline_kd.models.interface import build_model
    cfg = build_dataclass(ExperimentConfig, student_dict(tiny_corpus, u_cache, "unused", alpha=0.0, gamma=0.0,
                                                         seq_weight=0.0, beta=1.0))
    corpus, cache = Corpus(tiny_corpus), TeacherCache(str(u_cache))
    ds = DistillBatchDataset(corpus.split("train"), corpus.vocab, cache.split("train"),
                             untranscribed=[(corpus.split("untranscribed"), cache.split("untranscribed"))])
    assert len(ds) == 96 + 48
    batch = ds[[0, 100, 101, 130]]
    assert batch["labelled"].tolist() == [True, False, False, False]
    assert batch["utterance_ids"][1:] == [corpus.split("untranscribed").utterance_ids[i] for i in (4, 5, 34)]
    torch.manual_seed(0)
    model = build_model(cfg.model)
    loss_fn = StudentLoss(cfg.distill, model.hidden_size, {}, SpecAugment(cfg.augment, False),
                               torch.device("cpu"))
    _, terms = loss_fn(model, batch, epoch=1)
    lp, out_len = model(batch["features"], batch["feature_lengths"])
    best = batch["teacher"].log_probs.argmax(-1).T
    targets = [batch["labels"][:int(batch["label_lengths"][0])]]
    for b in (1, 2, 3):
        path = best[b, :int(batch["teacher"].lengths[b])]
        path = path[torch.cat([torch.tensor([True]), path[1:] != path[:-1]])]
        targets.append(path[path != 0])
    assert all(len(t) for t in targets)
    want = ctc_loss(lp, torch.cat(targets), out_len, torch.tensor([len(t) for t in targets]))
    assert float(terms["ctc"]) == pytest.approx(float(want.detach()), rel=1e-5)


def test_untranscribed_split_must_be_in_the_cache_and_not_dev(f32_cache, tiny_corpus, tmp_path):
    cfg = build_dataclass(ExperimentConfig, student_dict(tiny_corpus, f32_cache, tmp_path / "s",
                                                         untranscribed_splits=["untranscribed"]))
    with pytest.raises(OfflineKDError, match="split 'untranscribed' is not in the cache \\(has: train\\)"):
        train_student.run(cfg, **QUIET)
    cfg = build_dataclass(ExperimentConfig, student_dict(tiny_corpus, f32_cache, tmp_path / "s",
                                                         untranscribed_splits=["dev"]))
    with pytest.raises(OfflineKDError, match="'dev' is data.dev_split"):
        train_student.run(cfg, **QUIET)
    with pytest.raises(OfflineKDError, match="untranscribed_fraction must be in"):
        build_dataclass(ExperimentConfig, student_dict(tiny_corpus, f32_cache, tmp_path / "s",
                                                       untranscribed_fraction=0))


# ------------------------------------------------------------------------- the teacher's dev WER (#17 item 6)
def test_cache_records_the_teachers_dev_figures(u_cache, tiny_teacher, tiny_corpus, tmp_path, capsys):
    from offline_kd.cache.reader import TeacherCache
    ckpt = torch.load(tiny_teacher, weights_only=False)
    dev = TeacherCache(str(u_cache)).meta.teacher_dev
    assert dev == {"wer": ckpt["dev"]["wer"], "cer": ckpt["dev"]["cer"], "epoch": ckpt["epoch"],
                   "corpus": str(tiny_corpus), "split": "dev"}
    res = CliRunner().invoke(main, ["cache", "info", str(u_cache)])
    assert res.exit_code == 0 and f"teacher dev WER {dev['wer']:.2f}% CER {dev['cer']:.2f}%" in res.output
    # a baseline given for comparison that is as good as the teacher (here: the teacher itself) is warned about
    lines = []
    cfg = build_dataclass(ExperimentConfig, student_dict(tiny_corpus, u_cache, tmp_path / "s", epochs=1,
                                                         compare_baseline=str(tiny_teacher)))
    train_student.run(cfg, log=lines.append)
    assert f"teacher dev WER {dev['wer']:.2f}% CER {dev['cer']:.2f}% (epoch {ckpt['epoch']})" in "\n".join(lines)
    assert any(l.startswith(f"warning: the baseline's dev WER {dev['wer']:.2f}% is already at or below the "
                            f"teacher's") for l in lines)
    assert f"(teacher {dev['wer']:.2f}% / {dev['cer']:.2f}%)" in capsys.readouterr().out
    cfg = build_dataclass(ExperimentConfig, student_dict(tiny_corpus, u_cache, tmp_path / "s2", epochs=1,
                                                         compare_baseline=str(tmp_path / "nothing")))
    with pytest.raises(OfflineKDError, match="distill.compare_baseline: .*nothing is neither a run directory"):
        train_student.run(cfg, **QUIET)


def test_warning_when_the_student_passes_its_teacher(tiny_teacher, tiny_corpus, f32_cache, tmp_path, capsys):
    ckpt = torch.load(tiny_teacher, weights_only=False)
    ckpt["dev"] = {"wer": 100.5, "cer": 100.5}        # a teacher any student passes
    torch.save(ckpt, tmp_path / "weak.pt")
    cfg = build_dataclass(ExperimentConfig, student_dict(tiny_corpus, f32_cache, tmp_path / "s", epochs=2))
    train_student.run(cfg, online_teacher=str(tmp_path / "weak.pt"), **QUIET)
    out = capsys.readouterr().out
    assert out.count("has passed the teacher's 100.50%") == 1, out


@pytest.mark.parametrize("limit,used", [(None, 48), (10, 10), (48, 48), (100, 48)])
def test_untranscribed_limit_keeps_the_first_utterances(tiny_corpus, tmp_path, limit, used):
    """distill.untranscribed_limit: at most that many untranscribed utterances at all, the first in stored order."""
    from offline_kd.distillation.student import _open_untranscribed
    cfg = build_dataclass(ExperimentConfig, student_dict(tiny_corpus, tmp_path / "c.zarr", tmp_path / "s",
                                                         untranscribed_splits=["untranscribed"],
                                                         untranscribed_limit=limit))
    logs = []
    [(name, reader, idx)] = _open_untranscribed(cfg, Corpus(tiny_corpus), logs.append)
    assert name == "untranscribed" and len(reader) == 48
    assert idx.tolist() == list(range(used))
    assert any(f"the first {used} of 48 untranscribed utterances" in m for m in logs) == (limit is not None)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_untranscribed_limit_must_be_a_positive_integer(tiny_corpus, tmp_path, bad):
    with pytest.raises(OfflineKDError, match="distill.untranscribed_limit"):
        build_dataclass(ExperimentConfig, student_dict(tiny_corpus, tmp_path / "c.zarr", tmp_path / "s",
                                                       untranscribed_limit=bad))


@pytest.mark.parametrize("better_by,warned", [(3.0, True), (4.9, True), (5.5, False), (12.0, False)])
def test_train_student_says_before_training_when_the_teacher_is_too_close_to_the_baseline(
        tiny_teacher, tiny_corpus, tmp_path, better_by, warned):
    """#31: with distill.compare_baseline, a teacher less than USEFUL_GAP (5) dev points better than the CTC-only
    baseline is warned about before training (the robustness study measured no reliable gain there)."""
    from offline_kd.distillation.student import USEFUL_GAP, _teacher_reference
    from offline_kd.models.checkpoint import checkpoint_dev, load_checkpoint
    base = checkpoint_dev(load_checkpoint(tiny_teacher))
    teacher_dev = {"wer": base["wer"] - better_by, "cer": 1.0, "epoch": 3, "corpus": str(tiny_corpus), "split": "dev"}
    cfg = build_dataclass(ExperimentConfig, student_dict(tiny_corpus, tmp_path / "c.zarr", tmp_path / "s",
                                                         compare_baseline=str(tiny_teacher)))
    lines = []
    _teacher_reference(teacher_dev, cfg, lines.append)
    assert USEFUL_GAP == 5.0
    assert any(f"warning: the teacher is only {better_by:.1f} points better than the baseline" in l
               for l in lines) == warned
    lines = []
    cfg = build_dataclass(ExperimentConfig, student_dict(tiny_corpus, tmp_path / "c.zarr", tmp_path / "s"))
    _teacher_reference(teacher_dev, cfg, lines.append)
    assert any(l.startswith("hint: set distill.compare_baseline") for l in lines)


def test_teacher_verdict_thresholds():
    from offline_kd.distillation.student import teacher_verdict
    assert teacher_verdict({"wer": 50.0}, {"wer": 49.0}).startswith("warning: the baseline's dev WER 49.00% is "
                                                                    "already at or below the teacher's 50.00%")
    assert teacher_verdict({"wer": 50.0}, {"wer": 50.0}).startswith("warning: the baseline's dev WER")
    assert teacher_verdict({"wer": 50.0}, {"wer": 53.0}).startswith("warning: the teacher is only 3.0 points better")
    assert teacher_verdict({"wer": 50.0}, {"wer": 53.0}, same=False) is None     # another dev split: no comparison
    assert teacher_verdict({"wer": 50.0}, {"wer": 56.0}) is None
    assert teacher_verdict(None, {"wer": 56.0}) is None
