"""The way out: a checkpoint that carries its front end, `offline-kd transcribe` (files, directories, manifests,
corpus splits), `load_model` from Python, `offline-kd export` (ONNX, int8, TorchScript) checked against PyTorch, and
sherpa-onnx's own API reading the export: the same greedy text from all of them, and one line for each bad input.

The audio is made here: tone "syllables" (a, b, c at three pitches, words apart by a short silence), 16-bit WAV at
16 kHz. The model is a tiny BiLSTM written by `offline-kd train` after one epoch at a tiny learning rate: close to
its random initialisation, so it emits many tokens (a better-trained tiny model emits only blanks on 30 utterances,
and equal empty texts would prove nothing); what is compared is the function, not its accuracy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from offline_kd import load_model
from offline_kd.cli import main
from offline_kd.config import ExperimentConfig, build_dataclass
from offline_kd.commands import train
from offline_kd.data.corpus import Corpus
from offline_kd.data.frontend import FbankOptions
from offline_kd.inference import export as export_mod

FREQ = {"a": 400.0, "b": 900.0, "c": 1900.0}
RATE = 16000


def speak(text: str, rate: int, rng) -> np.ndarray:
    parts = [np.zeros(int(0.05 * rate))]
    for ch in text:
        n = int(rate * (0.06 if ch == " " else rng.uniform(0.09, 0.14)))
        t = np.arange(n) / rate
        parts.append(np.zeros(n) if ch == " " else 0.3 * np.sin(2 * np.pi * FREQ[ch] * t) * np.hanning(n))
    parts.append(np.zeros(int(0.05 * rate)))
    x = np.concatenate(parts)
    return (x + 0.003 * rng.standard_normal(x.size)).astype(np.float32)


def make_audio(d: Path, n: int = 30, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (d / "wav").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        words = ["".join(rng.choice(list("abc"), rng.integers(1, 4))) for _ in range(rng.integers(1, 3))]
        text = " ".join(words)
        sf.write(str(d / "wav" / f"u{i:03d}.wav"), speak(text, RATE, rng), RATE, subtype="PCM_16")
        rows.append({"audio_filepath": f"wav/u{i:03d}.wav", "text": text, "split": "train" if i % 5 else "dev"})
    (d / "m.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d / "m.json"


def cli(*args) -> tuple[int, str]:
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res.exit_code, res.output


def trained(d: Path, preset: str, cmvn: str) -> tuple[Path, Path]:
    """(corpus, checkpoint) of a tiny model trained by `offline-kd train` on the tone corpus."""
    manifest = make_audio(d)
    code, out = cli("data", "import", "--manifest", manifest, "--out", d / "corpus", "--fbank-preset", preset,
                    "--cmvn", cmvn, "--no-progress")
    assert code == 0, out
    cfg = build_dataclass(ExperimentConfig, {
        "data": {"corpus": str(d / "corpus"), "train_split": "train", "dev_split": "dev", "batch_size": 4},
        "model": {"input_dim": 80, "hidden_dim": 16, "num_layers": 2, "num_classes": 5, "subsampling": 2},
        "train": {"epochs": 1, "lr": 1e-5, "output_dir": str(d / "run"), "progress": False, "seed": 0}})
    train.run(cfg, log=lambda *_: None)
    return d / "corpus", d / "run" / "checkpoint_last.pt"


@pytest.fixture(scope="module")
def lhotse_model(tmp_path_factory):
    return trained(tmp_path_factory.mktemp("lhotse"), "lhotse", "global")


@pytest.fixture(scope="module")
def kaldi_model(tmp_path_factory):
    return trained(tmp_path_factory.mktemp("kaldi"), "kaldi", "utterance")


def wavs(corpus: Path) -> list[str]:
    return sorted(str(p) for p in (corpus.parent / "wav").glob("*.wav"))


def dev_hypotheses(ckpt: Path, tmp: Path) -> dict:
    code, out = cli("evaluate", "--checkpoint", ckpt, "--split", "dev", "--hypotheses", tmp / "hyp.jsonl", "--json")
    assert code == 0, out
    return {r["utterance_id"]: r["hypothesis"] for r in map(json.loads, (tmp / "hyp.jsonl").read_text().splitlines())}


# ------------------------------------------------------------------------------------------- the checkpoint
def test_checkpoint_carries_the_front_end_and_reproduces_the_imported_features(lhotse_model):
    corpus, ckpt = lhotse_model
    c = Corpus(corpus)
    assert torch.load(ckpt, weights_only=True)["frontend"] == c.meta["frontend"]
    m = load_model(ckpt)
    r = c.split("dev")
    from offline_kd.inference.audio_input import from_paths
    utts = {u.uid: u for u in from_paths(wavs(corpus))}
    for i, uid in enumerate(r.utterance_ids):
        np.testing.assert_array_equal(m.features(utts[uid]), r.features(i))


def test_default_front_end_record_is_unchanged():
    """Corpora imported before the lhotse preset keep their front-end record (and so their caches' identity)."""
    assert "normalize_samples" not in FbankOptions().to_dict()
    assert FbankOptions(normalize_samples=True).to_dict()["normalize_samples"] is True


# ---------------------------------------------------------------------------------------------- transcribe
@pytest.mark.parametrize("which", ["lhotse_model", "kaldi_model"])
def test_transcribe_audio_equals_evaluate_on_the_imported_split(which, request, tmp_path):
    corpus, ckpt = request.getfixturevalue(which)
    expected = dev_hypotheses(ckpt, tmp_path)
    assert sum(bool(h) for h in expected.values()) >= len(expected) // 2     # the model emits tokens
    dev = [w for w in wavs(corpus) if Path(w).stem in expected]
    code, out = cli("transcribe", ckpt, *dev, "--out", tmp_path / "t.jsonl", "--no-progress")
    assert code == 0, out
    assert "real-time factor" in out
    rows = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert {r["id"]: r["text"] for r in rows} == expected
    for r in rows:                  # words: the text's words, in order, inside the audio, start <= end
        assert " ".join(w["word"] for w in r["words"]) == r["text"]
        dur = sf.info(str(corpus.parent / "wav" / f"{r['id']}.wav")).duration
        assert all(0 <= w["start"] <= w["end"] <= dur + 0.05 for w in r["words"])
        assert [w["start"] for w in r["words"]] == sorted(w["start"] for w in r["words"])


def test_manifest_directory_and_jobs_give_the_same_texts(lhotse_model, tmp_path):
    corpus, ckpt = lhotse_model
    code, a = cli("transcribe", ckpt, corpus.parent / "wav", "--format", "text", "--no-progress")
    assert code == 0, a
    code, b = cli("transcribe", ckpt, "--manifest", corpus.parent / "m.json", "--jobs", "2", "--format", "text",
                  "--no-progress")
    assert code == 0, b
    lines = lambda out: sorted(x for x in out.splitlines() if x.startswith("u"))       # noqa: E731
    assert lines(a) == lines(b) and len(lines(a)) == 30
    assert "WER" in b          # the manifest has transcripts: the job scores itself


def test_python_api_files_and_samples(lhotse_model):
    corpus, ckpt = lhotse_model
    m = load_model(ckpt)
    files = wavs(corpus)[:4]
    texts = m.transcribe(files)
    int16 = [sf.read(f, dtype="int16")[0] for f in files]
    floats = [sf.read(f, dtype="float32")[0] for f in files]
    assert m.transcribe(int16) == texts and m.transcribe(floats) == texts
    lps = m.log_probs(files[:1])
    assert lps[0].shape[1] == 5 and np.allclose(np.exp(lps[0]).sum(1), 1, atol=1e-4)
    timed = m.transcribe(files, timestamps=True)
    assert [t.text for t in timed] == texts and all(t.words is not None for t in timed)


def test_corpus_split_of_features_equals_evaluate(tiny_teacher, tiny_corpus, tmp_path):
    """A model of precomputed features (the demo's kind): its corpus split transcribes; audio is refused."""
    expected = dev_hypotheses(tiny_teacher, tmp_path)
    code, out = cli("transcribe", tiny_teacher, "--corpus", tiny_corpus, "--split", "dev", "--format", "text",
                    "--no-progress")
    assert code == 0, out
    got = dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)
    assert got == expected
    wav = tmp_path / "x.wav"
    sf.write(str(wav), np.zeros(16000, np.float32), RATE)
    code, out = cli("transcribe", tiny_teacher, wav)
    assert code == 1 and "carries no audio front end" in out and "--corpus" in out and "Traceback" not in out


def test_a_checkpoint_from_before_front_ends_borrows_one(lhotse_model, tmp_path):
    corpus, ckpt = lhotse_model
    old = torch.load(ckpt, weights_only=True)
    del old["frontend"]
    old_path = tmp_path / "old.pt"
    torch.save(old, old_path)
    files = wavs(corpus)[:3]
    assert load_model(old_path).transcribe(files) == load_model(ckpt).transcribe(files)   # its training corpus
    old["config"]["data"]["corpus"] = str(tmp_path / "moved")
    torch.save(old, old_path)
    code, out = cli("transcribe", old_path, files[0])
    assert code == 1 and "--corpus" in out and len(out.strip().splitlines()) == 1
    code, out = cli("transcribe", old_path, files[0], "--corpus", corpus, "--format", "text", "--no-progress")
    assert code == 0 and out.splitlines()[0].split("\t")[1] == load_model(ckpt).transcribe(files[:1])[0]


def _bad_inputs(d: Path) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    (d / "junk.wav").write_bytes(b"not audio at all")
    sf.write(str(d / "empty.wav"), np.zeros(0, np.float32), RATE)
    sf.write(str(d / "short.wav"), np.zeros(100, np.float32), RATE)
    return {"junk.wav": d / "junk.wav", "empty.wav": d / "empty.wav", "short.wav": d / "short.wav"}


@pytest.mark.parametrize("name", ["junk.wav", "empty.wav", "short.wav", "missing.wav"])
def test_a_bad_input_is_one_line_naming_it_and_nothing_is_written(lhotse_model, tmp_path, name):
    corpus, ckpt = lhotse_model
    bad = _bad_inputs(tmp_path / "bad").get(name, tmp_path / "bad" / name)
    code, out = cli("transcribe", ckpt, wavs(corpus)[0], bad, "--out", tmp_path / "o.jsonl", "--no-progress")
    assert code == 1 and name in out and "Traceback" not in out, out
    assert len(out.strip().splitlines()) == 1
    assert not (tmp_path / "o.jsonl").exists() and not list(tmp_path.glob("o.jsonl*"))


def test_skip_invalid_transcribes_the_rest_and_lists_the_bad(lhotse_model, tmp_path):
    corpus, ckpt = lhotse_model
    bad = _bad_inputs(tmp_path / "bad")
    code, out = cli("transcribe", ckpt, wavs(corpus)[0], *bad.values(), "--skip-invalid", "--out",
                    tmp_path / "o.jsonl", "--no-progress")
    assert code == 0, out
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 1
    for name in bad:
        assert f"skipped {Path(name).stem}" in out


def test_a_file_that_is_not_a_model_is_one_line(tmp_path, lhotse_model):
    corpus, _ = lhotse_model
    (tmp_path / "x.pt").write_bytes(b"nope")
    code, out = cli("transcribe", tmp_path / "x.pt", wavs(corpus)[0])
    assert code == 1 and "x.pt" in out and "Traceback" not in out
    torch.save({"weights": torch.zeros(2)}, tmp_path / "y.pt")
    code, out = cli("transcribe", tmp_path / "y.pt", wavs(corpus)[0])
    assert code == 1 and "not an offline-kd checkpoint" in out


def test_samples_at_an_unusable_rate_are_one_line(lhotse_model):
    from offline_kd.errors import OfflineKDError
    m = load_model(lhotse_model[1])
    with pytest.raises(OfflineKDError, match=r"inputs\[0\]"):
        m.transcribe([np.zeros(0, np.float32)])
    with pytest.raises(OfflineKDError, match=r"inputs\[0\]"):
        m.transcribe([np.full(16000, np.nan, np.float32)])
    with pytest.raises(OfflineKDError, match=r"inputs\[0\]: sample rate 0"):
        m.transcribe([np.zeros(16000, np.float32)], sample_rate=0)


# ----------------------------------------------------------------------------------------------------- export
onnx = pytest.importorskip("onnxruntime", reason="the [export] extra: onnx, onnxruntime, sherpa-onnx")


def test_onnx_export_checks_itself_and_matches_pytorch_on_audio(lhotse_model, tmp_path):
    corpus, ckpt = lhotse_model
    code, out = cli("export", ckpt, "--out", tmp_path / "exp", "--int8")
    assert code == 0, out
    exp = tmp_path / "exp"
    assert {p.name for p in exp.iterdir()} == {"model.onnx", "model.int8.onnx", "tokens.txt", "frontend.json",
                                                "sherpa-onnx.json"}
    assert (exp / "tokens.txt").read_text().splitlines() == ["<blk> 0", "\u2581 1", "a 2", "b 3", "c 4"]
    settings = json.loads((exp / "sherpa-onnx.json").read_text())
    assert settings["command_line_exact"] is True          # the lhotse preset: sherpa-onnx's own front end
    # onnxruntime on real audio features, batched with padding, against the PyTorch path of transcribe
    m = load_model(ckpt)
    from offline_kd.inference.audio_input import from_paths
    utts = from_paths(wavs(corpus)[:6])
    raw = [m.frontend.fbank.compute(sf.read(u.spec.path, dtype="int16")[0]) for u in utts]
    ours = m.forward_features([m.frontend.normalise(f) for f in raw])
    theirs = export_mod._onnx_log_probs(exp / "model.onnx", raw)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and np.abs(a - b).max() < export_mod.ONNX_TOLERANCE


def test_export_refuses_a_graph_that_differs_and_writes_nothing(lhotse_model, tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "ONNX_TOLERANCE", -1.0)
    code, out = cli("export", lhotse_model[1], "--out", tmp_path / "exp")
    assert code == 1 and "differ from PyTorch's" in out
    assert not (tmp_path / "exp").exists() and not list(tmp_path.glob(".exp*"))


def test_torchscript_export(kaldi_model, tmp_path):
    corpus, ckpt = kaldi_model
    code, out = cli("export", ckpt, "--format", "torchscript", "--out", tmp_path / "ts")
    assert code == 0, out
    traced = torch.jit.load(str(tmp_path / "ts" / "model.pt"))
    m = load_model(ckpt)
    raw = m.frontend.fbank.compute(sf.read(wavs(corpus)[0], dtype="int16")[0])
    lp, n = traced(torch.from_numpy(raw)[None], torch.tensor([raw.shape[0]]))
    ours = m.forward_features([m.frontend.normalise(raw)])[0]
    assert int(n[0]) == ours.shape[0] and np.abs(lp[0].detach().numpy() - ours).max() < 1e-3


@pytest.mark.parametrize("which", ["lhotse_model", "kaldi_model"])
def test_sherpa_onnx_reads_the_export_and_gives_the_same_text(which, request, tmp_path):
    sherpa_onnx = pytest.importorskip("sherpa_onnx")
    corpus, ckpt = request.getfixturevalue(which)
    code, out = cli("export", ckpt, "--out", tmp_path / "exp")
    assert code == 0, out
    files = wavs(corpus)
    expected = load_model(ckpt).transcribe(files)
    assert sum(bool(t) for t in expected) >= len(files) // 2
    from offline_kd.inference.sherpa import recognizer, transcribe_files
    assert transcribe_files(recognizer(str(tmp_path / "exp")), files) == expected
    if which == "lhotse_model":    # sherpa-onnx's plain constructor: what its command line does
        plain = sherpa_onnx.OfflineRecognizer.from_zipformer_ctc(model=str(tmp_path / "exp" / "model.onnx"),
                                                                 tokens=str(tmp_path / "exp" / "tokens.txt"))
        assert transcribe_files(plain, files) == expected
    else:
        assert "snip_edges" in out      # the export says why its command line would differ


def test_sherpa_onnx_command_line(lhotse_model, tmp_path):
    exe = shutil.which("sherpa-onnx-offline")
    if exe is None:
        pytest.skip("sherpa-onnx-offline not installed (pip install sherpa-onnx-bin)")
    import subprocess
    corpus, ckpt = lhotse_model
    code, out = cli("export", ckpt, "--out", tmp_path / "exp")
    assert code == 0, out
    files = wavs(corpus)[:5]
    res = subprocess.run([exe, f"--zipformer-ctc-model={tmp_path / 'exp' / 'model.onnx'}",
                          f"--tokens={tmp_path / 'exp' / 'tokens.txt'}", "--num-threads=1", *files],
                         capture_output=True, text=True, check=True)
    texts = [json.loads(line)["text"] for line in (res.stdout + res.stderr).splitlines() if line.startswith("{")]
    assert [" ".join(t.split()) for t in texts] == load_model(ckpt).transcribe(files)


def test_beam_search_equals_evaluate_beam(lhotse_model, tmp_path):
    corpus, ckpt = lhotse_model
    code, out = cli("evaluate", "--checkpoint", ckpt, "--split", "dev", "--decoder", "beam", "--beam-width", "8",
                    "--hypotheses", tmp_path / "hyp.jsonl", "--json")
    assert code == 0, out
    expected = {r["utterance_id"]: r["hypothesis"]
                for r in map(json.loads, (tmp_path / "hyp.jsonl").read_text().splitlines())}
    dev = [w for w in wavs(corpus) if Path(w).stem in expected]
    code, out = cli("transcribe", ckpt, *dev, "--decoder", "beam", "--beam-width", "8", "--out", tmp_path / "b.jsonl",
                    "--no-progress")
    assert code == 0, out
    rows = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert {r["id"]: r["text"] for r in rows} == expected
    assert all(" ".join(w["word"] for w in r["words"]) == r["text"] for r in rows)


def test_evaluation_refuses_audio_imported_with_another_front_end_and_like_imports_it_right(lhotse_model, tmp_path):
    """#45 item 4: the dev audio imported again as a 'test' split: with other front-end options (kaldi preset, no
    CMVN) `evaluate` refuses, naming what differs and `--like`; imported `--like` the training corpus, it reads the
    training corpus's features bit for bit, so its hypotheses are the dev split's."""
    corpus, ckpt = lhotse_model
    rows = [json.loads(line) for line in (corpus.parent / "m.json").read_text().splitlines()]
    manifest = tmp_path / "new.json"
    manifest.write_text("".join(json.dumps({**r, "audio_filepath": str(corpus.parent / r["audio_filepath"]),
                                            "split": "test"}) + "\n" for r in rows if r["split"] == "dev"))
    code, out = cli("data", "import", "--manifest", manifest, "--out", tmp_path / "other", "--no-progress")
    assert code == 0, out
    code, out = cli("evaluate", "--checkpoint", ckpt, "--corpus", tmp_path / "other", "--split", "test")
    assert code != 0 and "vocabulary" in out and "--vocab-from-teacher" in out and "--like" in out   # dev's letters
    shutil.rmtree(tmp_path / "other")
    code, out = cli("data", "import", "--manifest", manifest, "--out", tmp_path / "other", "--no-progress",
                    "--vocab-from-teacher", ckpt)
    assert code == 0, out
    code, out = cli("evaluate", "--checkpoint", ckpt, "--corpus", tmp_path / "other", "--split", "test")
    assert code != 0 and "front end differs" in out and "cmvn global vs none" in out and "--like" in out
    assert "Traceback" not in out
    code, out = cli("data", "import", "--manifest", manifest, "--out", tmp_path / "like", "--like", corpus,
                    "--no-progress")
    assert code == 0, out
    want = Corpus(corpus).split("dev")
    got = Corpus(tmp_path / "like").split("test")
    assert sorted(got.utterance_ids) == sorted(want.utterance_ids)
    for i, uid in enumerate(got.utterance_ids):
        np.testing.assert_array_equal(got.features(i), want.features(want.index[uid]))
    code, out = cli("evaluate", "--checkpoint", ckpt, "--corpus", tmp_path / "like", "--split", "test",
                    "--hypotheses", tmp_path / "hyp.jsonl", "--json")
    assert code == 0, out
    lines = (tmp_path / "hyp.jsonl").read_text().splitlines()
    hyps = {r["utterance_id"]: r["hypothesis"] for r in map(json.loads, lines)}
    assert hyps == dev_hypotheses(ckpt, tmp_path)
