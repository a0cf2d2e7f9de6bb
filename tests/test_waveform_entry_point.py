"""An entry-point teacher that reads audio (`input_kind: waveform`, #45 item 8): it receives the corpus's kept
samples, its frames are brought to the student's, and the cache holds exactly what it computes on those samples;
what it lacks is a one-line error naming the members a waveform teacher needs. A features teacher whose input_dim
is not the corpus's is named as the teacher's, not as `model.input_dim`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from helpers import write_yaml
from offline_kd.cache.reader import TeacherCache
from offline_kd.cli import main
from offline_kd.data.corpus import Corpus
from test_audio_import import nemo_corpus, run

TEACHER = '''
import torch

SHIFT = 320

def frame_features(audio, n):
    """(N,) samples -> (frames, 2): log energy and mean of each 320-sample frame."""
    t = int(n) // SHIFT
    x = audio[: t * SHIFT].reshape(t, SHIFT)
    return torch.stack([torch.log((x ** 2).mean(1) + 1e-6), x.mean(1) * 100], 1)

class Wave(torch.nn.Module):
    def __init__(self, tokens, declare=True, frame_shift=True):
        super().__init__()
        self.tokens, self.blank, self.word_delimiter = tokens, 0, "|"
        if declare:
            self.input_kind, self.sample_rate = "waveform", 16000
        if frame_shift:
            self.frame_shift_samples = SHIFT
        g = torch.Generator().manual_seed(0)
        self.lin = torch.nn.Linear(2, len(tokens))
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(len(tokens), 2, generator=g))
            self.lin.bias.zero_()
        self.seen = []

    def layer_dims(self):
        return {1: len(self.tokens)}

    def output_lengths(self, samples):
        return samples // SHIFT

    def forward_with_hidden_states(self, audio, lengths, layers=None):
        self.seen.append((audio.dtype, float(audio.abs().max())))
        out_len = lengths // SHIFT
        t = int(out_len.max())
        y = torch.zeros(audio.shape[0], t, len(self.tokens))
        for b in range(audio.shape[0]):
            y[b, : int(out_len[b])] = self.lin(frame_features(audio[b], lengths[b]))
        return y.log_softmax(-1).transpose(0, 1), out_len, {L: y for L in (layers or [])}

def load(tokens, declare=True, frame_shift=True):
    return Wave(tokens, declare, frame_shift)
'''


@pytest.fixture(scope="module")
def kept_audio(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("wave_ep")
    code, out = run("--manifest", nemo_corpus(d, n=8), "--out", d / "corpus", "--keep-audio")
    assert code == 0, out
    return d / "corpus"


def dump(tmp_path, monkeypatch, corpus, **teacher):
    (tmp_path / "wave_teacher.py").write_text(TEACHER)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "cache.zarr"
    spec = {"entry_point": "wave_teacher:load",
            "args": {"tokens": list(Corpus(corpus).vocab.tokens), **teacher.pop("args", {})}, **teacher}
    cfg = write_yaml(tmp_path / "d.yaml", {"dump": {
        "teacher": spec, "corpus": str(corpus), "output": str(out), "splits": ["train", "dev"], "layers": [1],
        "batch_size": 4, "progress": False, "device": "cpu", "subsampling": 2, "max_dropped_mass": 1.0,
        "codecs": {"log_probs": "float32", "hidden": "float32"}}})
    res = CliRunner().invoke(main, ["dump-teacher", "--config", str(cfg)])
    return res.exit_code, res.output, out


@pytest.mark.parametrize("where", ["attributes", "spec"])
def test_a_waveform_entry_point_gets_the_kept_samples_and_the_cache_holds_what_it_computes(kept_audio, tmp_path,
                                                                                          monkeypatch, where):
    teacher = {"args": {"declare": False}, "input_kind": "waveform", "sample_rate": 16000} if where == "spec" else {}
    code, out, cache = dump(tmp_path, monkeypatch, kept_audio, **teacher)
    assert code == 0, out
    import wave_teacher
    model = wave_teacher.load(list(Corpus(kept_audio).vocab.tokens))
    c = TeacherCache(str(cache))
    assert c.meta.teacher["alignment"]["frames"]["unit"] == "samples"
    reader = Corpus(kept_audio).split("train")
    split = c.split("train")
    for i, uid in enumerate(reader.utterance_ids):
        audio = torch.from_numpy(reader.audio(i).astype(np.float32) / 32768.0)
        with torch.no_grad():
            want = model.lin(wave_teacher.frame_features(audio, len(audio))).log_softmax(-1).numpy()
        got = split.read(split.position[uid])["log_probs"]
        frames = -(-reader.lengths[i] // 2)         # the student's frames: 20 ms, as the teacher's
        n = min(len(want), frames)
        np.testing.assert_allclose(got[:n], want[:n], rtol=1e-5, atol=1e-5)
        assert len(got) == frames


def test_a_waveform_entry_point_missing_its_frame_shift_is_one_line(kept_audio, tmp_path, monkeypatch):
    code, out, cache = dump(tmp_path, monkeypatch, kept_audio, args={"frame_shift": False})
    assert code != 0 and "frame_shift_samples" in out and "reads audio" in out and "Traceback" not in out
    assert not cache.exists()


def test_an_entry_point_option_on_another_source_or_a_bad_kind_is_refused(kept_audio, tmp_path, monkeypatch):
    code, out, _ = dump(tmp_path, monkeypatch, kept_audio, input_kind="spectrogram")
    assert code != 0 and "input_kind" in out and "Traceback" not in out
    from offline_kd.errors import OfflineKDError
    from offline_kd.teachers.source import parse_teacher
    with pytest.raises(OfflineKDError, match="only an entry_point"):
        parse_teacher({"huggingface": "x", "input_kind": "waveform"})


def test_a_features_teacher_of_another_input_dim_is_named_as_the_teachers(tmp_path, monkeypatch):
    from test_first_hour import TEACHER as FEATURES_TEACHER, UPPER, features_corpus
    corpus = features_corpus(tmp_path / "c", "upper")
    (tmp_path / "dim40_teacher.py").write_text(FEATURES_TEACHER.replace(
        "self.input_dim, self.subsampling = tokens, blank, 16, 2", "self.input_dim, self.subsampling = tokens, blank, 40, 2"))
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = write_yaml(tmp_path / "d.yaml", {"dump": {
        "teacher": {"entry_point": "dim40_teacher:load", "args": {"tokens": UPPER}}, "corpus": str(corpus),
        "output": str(tmp_path / "x.zarr"), "splits": ["train", "dev"], "layers": [1], "progress": False,
        "device": "cpu"}})
    res = CliRunner().invoke(main, ["dump-teacher", "--config", str(cfg)])
    assert res.exit_code != 0 and "the teacher's input_dim" in res.output and "model.input_dim" not in res.output
