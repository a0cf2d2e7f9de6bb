"""A teacher that knows more than its student (#17): transcribed audio for the teacher only (`data synth
--num-teacher-train`, split `teacher_train`), and `data.train_split` as a list of splits trained on as one."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from helpers import QUIET, experiment_dict, student_dict, tiny_spec
from offline_kd.cli import main
from offline_kd.commands import train, train_student
from offline_kd.data.splits import open_train_dev
from offline_kd.config import DataConfig, ExperimentConfig, ModelConfig, build_dataclass
from offline_kd.data.corpus import ConcatSplitReader, Corpus
from offline_kd.data.synth import write_synth_corpus
from offline_kd.errors import OfflineKDError


@pytest.fixture(scope="module")
def t_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("tcorpus") / "c"
    write_synth_corpus(out, tiny_spec(num_untranscribed=20, untranscribed_speakers=2, num_teacher_train=40,
                                      teacher_speakers=3), **QUIET)
    return out


def test_synth_teacher_split_is_transcribed_audio_of_its_own_speakers(t_corpus, tmp_path):
    c = Corpus(t_corpus)
    t = c.split("teacher_train")
    assert t.transcribed and len(t) == 40 and all(t.transcripts)
    spk = {int(u.rsplit("spk", 1)[1]) for u in t.utterance_ids}
    assert spk <= {4, 5, 6} and len(spk) > 1     # speakers 0-1 train, 2-3 untranscribed, 4-6 the teacher's
    # the other splits are byte for byte those of the corpus without it
    write_synth_corpus(tmp_path / "plain", tiny_spec(num_untranscribed=20, untranscribed_speakers=2), **QUIET)
    plain = Corpus(tmp_path / "plain")
    for name in ("train", "dev", "test", "untranscribed"):
        a, b = c.split(name), plain.split(name)
        assert a.utterance_ids == b.utterance_ids and a.transcripts == b.transcripts
        assert a.all_feature_hashes() == b.all_feature_hashes()
    assert (t_corpus / "lm_train.txt").read_text() == (tmp_path / "plain" / "lm_train.txt").read_text()
    assert json.loads((t_corpus / "corpus.json").read_text())["synth"]["num_teacher_train"] == 40
    # the same again with the latent acoustics: the teacher's speakers come from their own stream there too
    write_synth_corpus(tmp_path / "lat", tiny_spec(latent_dim=8, num_teacher_train=10, teacher_speakers=2), **QUIET)
    write_synth_corpus(tmp_path / "lat0", tiny_spec(latent_dim=8), **QUIET)
    assert Corpus(tmp_path / "lat").split("train").all_feature_hashes() == \
        Corpus(tmp_path / "lat0").split("train").all_feature_hashes()


def test_synth_teacher_split_needs_its_speakers(tmp_path):
    res = CliRunner().invoke(main, ["data", "synth", "--out", str(tmp_path / "c"), "--num-train", "8",
                                    "--num-teacher-train", "8"])
    assert res.exit_code == 1 and "--num-teacher-train needs --teacher-speakers" in res.output
    assert not (tmp_path / "c").exists()


def test_concat_reader_reads_each_utterance_from_its_split(t_corpus):
    c = Corpus(t_corpus)
    a, b = c.split("train"), c.split("teacher_train")
    cat = ConcatSplitReader([a, b])
    assert len(cat) == len(a) + len(b) and cat.utterance_ids == a.utterance_ids + b.utterance_ids
    assert cat.transcripts == a.transcripts + b.transcripts and cat.transcribed
    assert cat.lengths.tolist() == a.lengths.tolist() + b.lengths.tolist()
    for i in (0, len(a) - 1, len(a), len(cat) - 1):
        src, j = (a, i) if i < len(a) else (b, i - len(a))
        assert np.array_equal(cat.features(i), src.features(j))
        assert cat.index[src.utterance_ids[j]] == i
        assert cat.compute_feature_hash(i) == src.compute_feature_hash(j)
    assert cat.all_feature_hashes() == a.all_feature_hashes() + b.all_feature_hashes()
    with pytest.raises(OfflineKDError, match="is in more than one of"):
        ConcatSplitReader([a, a])


def test_train_on_several_splits(t_corpus, tmp_path):
    data = DataConfig(corpus=str(t_corpus), train_split=["train", "teacher_train"])
    model = ModelConfig(input_dim=16, hidden_dim=8, num_layers=1, num_classes=9)
    _, (reader, idx), _ = open_train_dev(data, model, log=lambda *_: None)
    assert isinstance(reader, ConcatSplitReader) and idx.tolist() == list(range(96 + 40))
    d = experiment_dict(t_corpus, tmp_path / "t", epochs=1)
    d["data"]["train_split"] = ["train", "teacher_train"]
    lines = []
    train.run(build_dataclass(ExperimentConfig, d), log=lines.append)
    assert any("train 136 utterances" in line for line in lines)
    ckpt = torch.load(tmp_path / "t" / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert ckpt["config"]["data"]["train_split"] == ["train", "teacher_train"]
    # resumable: a second epoch continues from the first; another list of splits is refused
    d["train"]["epochs"] = 2
    train.run(build_dataclass(ExperimentConfig, d), resume=True, **QUIET)
    assert torch.load(tmp_path / "t" / "checkpoint_last.pt", map_location="cpu", weights_only=False)["epoch"] == 2
    d["train"]["epochs"] = 3
    d["data"]["train_split"] = ["train"]
    with pytest.raises(OfflineKDError, match="train_split"):
        train.run(build_dataclass(ExperimentConfig, d), resume=True, **QUIET)
    d["data"]["train_split"] = ["train", "teacher_train"]
    # a one-element list is the split itself
    d["data"]["train_split"] = ["train"]
    d["train"]["output_dir"] = str(tmp_path / "one")
    lines = []
    train.run(build_dataclass(ExperimentConfig, d), log=lines.append)
    assert any("train 96 utterances" in line for line in lines)


@pytest.mark.parametrize("value, message", [
    ([], "data.train_split must be a split name or a list of distinct split names"),
    (["train", "train"], "data.train_split must be a split name or a list of distinct split names"),
    ([""], "data.train_split must be a split name or a list of distinct split names"),
])
def test_train_split_list_validated(value, message):
    with pytest.raises(OfflineKDError, match=message):
        DataConfig(train_split=value)


def test_every_listed_split_must_be_transcribed(t_corpus, tmp_path):
    d = experiment_dict(t_corpus, tmp_path / "t", epochs=1)
    d["data"]["train_split"] = ["train", "untranscribed"]
    with pytest.raises(OfflineKDError, match="data.train_split 'untranscribed' needs transcripts"):
        train.run(build_dataclass(ExperimentConfig, d), **QUIET)
    assert not (tmp_path / "t").exists()


def test_train_student_takes_one_transcribed_split(t_corpus, tmp_path):
    d = student_dict(t_corpus, tmp_path / "cache.zarr", tmp_path / "s")
    d["data"]["train_split"] = ["train", "teacher_train"]
    with pytest.raises(OfflineKDError, match="train-student trains on one transcribed split"):
        train_student.run(build_dataclass(ExperimentConfig, d), **QUIET)
    assert not (tmp_path / "s").exists()
    d["data"]["train_split"] = ["train"]
    d["distill"]["untranscribed_splits"] = ["train"]
    with pytest.raises(OfflineKDError, match="'train' is data.train_split"):
        train_student.run(build_dataclass(ExperimentConfig, d), **QUIET)
