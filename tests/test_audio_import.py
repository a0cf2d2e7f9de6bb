"""`offline-kd data import` from audio: every manifest kind, segments, resampling, channels, the Kaldi fbank front
end, --keep-audio, bad input (one line each, nothing written) and --skip-invalid, and a resumed import."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import kaldi_native_fbank as knf
import numpy as np
import pytest
import soundfile as sf
import soxr
from click.testing import CliRunner

from offline_kd.cli import main
from offline_kd.data import audio_import
from offline_kd.data.corpus import Corpus
from offline_kd.data.vocab import BLANK

TEXTS = ["ab ba", "a b", "abba", "b a b", "ba", "ab"]


def tone(rate: int, seconds: float, seed: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(round(rate * seconds))) / rate
    rng = np.random.default_rng(seed)
    x = 0.2 * np.sin(2 * np.pi * (300 + 50 * seed) * t) + 0.02 * rng.standard_normal(t.size)
    if channels > 1:
        x = np.stack([x * (1 + 0.5 * c) for c in range(channels)], axis=1)
    return x.astype(np.float32)


def write(path: Path, x: np.ndarray, rate: int, subtype: str = "PCM_16") -> Path:
    sf.write(str(path), x, rate, subtype=subtype)
    return path


def knf_fbank(samples_int16: np.ndarray, rate: int = 16000, bins: int = 80) -> np.ndarray:
    """kaldi-native-fbank called directly, as its own README shows (dither 0)."""
    o = knf.FbankOptions()
    o.frame_opts.dither = 0
    o.frame_opts.samp_freq = rate
    o.mel_opts.num_bins = bins
    fb = knf.OnlineFbank(o)
    fb.accept_waveform(rate, samples_int16.astype(np.float32).tolist())
    fb.input_finished()
    return np.stack([fb.get_frame(i) for i in range(fb.num_frames_ready)])


def int16_at_16k(x: np.ndarray, rate: int) -> np.ndarray:
    """What the importer does to a file's float samples: mono, resample (soxr HQ), quantize."""
    if x.ndim > 1:
        x = x.mean(axis=1, dtype=np.float32)
    if rate != 16000:
        x = soxr.resample(x, rate, 16000, quality="HQ")
    return np.clip(np.rint(np.asarray(x, np.float32) * 32768.0), -32768, 32767).astype(np.int16)


def run(*args) -> tuple[int, str]:
    res = CliRunner().invoke(main, ["data", "import", "--no-progress", *map(str, args)])
    return res.exit_code, res.output


def nemo_corpus(d: Path, n: int = 6, rate: int = 16000, split_field: bool = True) -> Path:
    (d / "wav").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        write(d / "wav" / f"u{i}.wav", tone(rate, 0.3 + 0.05 * i, i), rate)
        rows.append({"audio_filepath": f"wav/u{i}.wav", "duration": 0.3 + 0.05 * i, "text": TEXTS[i % 6],
                     **({"split": "train" if i < n - 2 else "dev"} if split_field else {})})
    m = d / "manifest.json"
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return m


# ------------------------------------------------------------------------------------------------ the good path
def test_nemo_manifest_features_equal_kaldi_native_fbank(tmp_path):
    m = nemo_corpus(tmp_path)
    code, out = run("--manifest", m, "--out", tmp_path / "c")
    assert code == 0, out
    c = Corpus(tmp_path / "c")
    assert c.feature_dim == 80 and c.vocab.tokens == (BLANK, "|", "a", "b")
    assert c.meta["frontend"]["kind"] == "kaldi-fbank" and c.meta["frontend"]["dither"] == 0
    train = c.split("train")
    assert train.utterance_ids == ["u0", "u1", "u2", "u3"] and train.transcripts[0] == "ab ba"
    assert not train.has_audio
    for i, uid in enumerate(train.utterance_ids):
        x, rate = sf.read(str(tmp_path / "wav" / f"{uid}.wav"), dtype="float32")
        np.testing.assert_array_equal(train.features(i), knf_fbank(int16_at_16k(x, rate)))
    assert len(c.split("dev")) == 2


@pytest.mark.parametrize("rate", [8000, 22050, 48000])
def test_resampled_to_16k_then_fbank(tmp_path, rate):
    x = tone(rate, 0.4, 1)
    write(tmp_path / "a.flac", x, rate)
    (tmp_path / "m.tsv").write_text("a\ta.flac\tab\n")
    code, out = run("--manifest", tmp_path / "m.tsv", "--split", "train", "--out", tmp_path / "c", "--keep-audio")
    assert code == 0, out
    r = Corpus(tmp_path / "c").split("train")
    decoded = sf.read(str(tmp_path / "a.flac"), dtype="float32")[0]
    expect = int16_at_16k(decoded, rate)
    np.testing.assert_array_equal(r.audio(0), expect)
    assert r.audio_sample_rate == 16000 and abs(len(expect) - 0.4 * 16000) <= 1
    np.testing.assert_array_equal(r.features(0), knf_fbank(expect))


def test_no_resample_refuses_another_rate(tmp_path):
    write(tmp_path / "a.wav", tone(8000, 0.4, 1), 8000)
    (tmp_path / "m.tsv").write_text("a\ta.wav\tab\n")
    code, out = run("--manifest", tmp_path / "m.tsv", "--split", "train", "--out", tmp_path / "c", "--no-resample")
    assert code == 1 and "m.tsv:1: utterance a" in out and "8000 Hz" in out and "resampling is off" in out
    assert not (tmp_path / "c").exists()


def test_stereo_is_averaged_and_a_named_channel_is_taken(tmp_path):
    x = tone(16000, 0.4, 2, channels=2)
    write(tmp_path / "s.wav", x, 16000)
    rows = [{"id": "mix", "audio": "s.wav", "text": "ab", "split": "train"},
            {"id": "right", "audio": "s.wav", "text": "ab", "split": "train", "channel": 1}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out = run("--manifest", tmp_path / "m.jsonl", "--out", tmp_path / "c", "--keep-audio")
    assert code == 0, out
    r = Corpus(tmp_path / "c").split("train")
    pcm = sf.read(str(tmp_path / "s.wav"), dtype="float32")[0]
    np.testing.assert_array_equal(r.audio(0), int16_at_16k(pcm.mean(axis=1, dtype=np.float32), 16000))
    np.testing.assert_array_equal(r.audio(1), int16_at_16k(pcm[:, 1], 16000))


def test_segments_with_offsets_and_per_split_manifests(tmp_path):
    long = tone(16000, 2.0, 3)
    write(tmp_path / "long.wav", long, 16000)
    segs = [(0.0, 0.5, "ab"), (0.5, 0.7, "ba"), (1.4, 0.6, "a b")]
    (tmp_path / "train.json").write_text("".join(
        json.dumps({"audio_filepath": "long.wav", "offset": o, "duration": d, "text": t}) + "\n"
        for o, d, t in segs))
    (tmp_path / "dev.json").write_text(json.dumps({"audio_filepath": "long.wav", "id": "d1", "duration": 0.4, "text": "b"}) + "\n")
    code, out = run("--manifest", tmp_path / "train.json", "--split", "train", "--manifest", tmp_path / "dev.json",
                    "--split", "dev", "--out", tmp_path / "c", "--keep-audio")
    assert code == 0, out
    c = Corpus(tmp_path / "c")
    r = c.split("train")
    assert r.utterance_ids == ["long", "long_00000500", "long_00001400"]
    pcm = int16_at_16k(sf.read(str(tmp_path / "long.wav"), dtype="float32")[0], 16000)
    for i, (o, d, _) in enumerate(segs):
        seg = pcm[int(round(o * 16000)):int(round(o * 16000)) + int(round(d * 16000))]
        np.testing.assert_array_equal(r.audio(i), seg)
        np.testing.assert_array_equal(r.features(i), knf_fbank(seg))
    assert c.split("dev").utterance_ids == ["d1"]


def test_untranscribed_rows_make_an_untranscribed_split(tmp_path):
    m = nemo_corpus(tmp_path, n=4)
    rows = [json.loads(x) for x in m.read_text().splitlines()]
    extra = [{"audio_filepath": r["audio_filepath"], "id": f"x{i}", "split": "untranscribed"}
             for i, r in enumerate(rows)]
    m.write_text("".join(json.dumps(r) + "\n" for r in rows + extra))
    code, out = run("--manifest", m, "--out", tmp_path / "c")
    assert code == 0, out
    u = Corpus(tmp_path / "c").split("untranscribed")
    assert not u.transcribed and u.utterance_ids == ["x0", "x1", "x2", "x3"]


def test_cmvn_global_uses_the_training_split_and_is_stored(tmp_path):
    m = nemo_corpus(tmp_path)
    assert run("--manifest", m, "--out", tmp_path / "raw")[0] == 0
    code, out = run("--manifest", m, "--out", tmp_path / "c", "--cmvn", "global")
    assert code == 0, out
    raw, c = Corpus(tmp_path / "raw"), Corpus(tmp_path / "c")
    frames = np.concatenate([raw.split("train").features(i) for i in range(4)]).astype(np.float64)
    cmvn = c.meta["frontend"]["cmvn"]
    assert cmvn["kind"] == "global" and cmvn["split"] == "train" and cmvn["frames"] == len(frames)
    np.testing.assert_allclose(cmvn["mean"], frames.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cmvn["std"], frames.std(0), rtol=1e-4, atol=1e-5)
    mean, std = np.asarray(cmvn["mean"], np.float32), np.asarray(cmvn["std"], np.float32)
    for s in ("train", "dev"):
        np.testing.assert_array_equal(c.split(s).features(0), (raw.split(s).features(0) - mean) / std)
    code, out = run("--manifest", m, "--out", tmp_path / "u", "--cmvn", "utterance")
    f = Corpus(tmp_path / "u").split("dev").features(1)
    assert code == 0 and np.abs(f.mean(0)).max() < 1e-3 and np.abs(f.std(0) - 1).max() < 1e-3


def test_jobs_give_the_same_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(audio_import, "CHUNK_UTTERANCES", 2)
    m = nemo_corpus(tmp_path, n=8)
    assert run("--manifest", m, "--out", tmp_path / "a", "--keep-audio")[0] == 0
    code, out = run("--manifest", m, "--out", tmp_path / "b", "--keep-audio", "--jobs", "2")
    assert code == 0, out
    for name in ("train.h5", "dev.h5", "corpus.json", "vocab.txt"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_lhotse_cutset_and_recordings_with_supervisions(tmp_path):
    lhotse = pytest.importorskip("lhotse")
    write(tmp_path / "r1.wav", tone(16000, 1.5, 4), 16000)
    write(tmp_path / "r2.flac", tone(22050, 1.0, 5, channels=2), 22050)
    recs = lhotse.RecordingSet.from_recordings([lhotse.Recording.from_file(tmp_path / "r1.wav"),
                                                lhotse.Recording.from_file(tmp_path / "r2.flac")])
    sups = lhotse.SupervisionSet.from_segments([
        lhotse.SupervisionSegment("s1", "r1", start=0.2, duration=0.5, text="ab", channel=0),
        lhotse.SupervisionSegment("s2", "r1", start=0.9, duration=0.4, text="b a", channel=0),
        lhotse.SupervisionSegment("s3", "r2", start=0.1, duration=0.6, text="ba", channel=1)])
    recs.to_file(tmp_path / "recordings.jsonl.gz")
    sups.to_file(tmp_path / "supervisions.jsonl.gz")
    cuts = lhotse.CutSet.from_manifests(recordings=recs, supervisions=sups).trim_to_supervisions()
    cuts.to_file(tmp_path / "cuts.jsonl.gz")
    code, out = run("--manifest", tmp_path / "recordings.jsonl.gz", "--split", "train", "--manifest",
                    tmp_path / "supervisions.jsonl.gz", "--split", "train", "--out", tmp_path / "a", "--keep-audio")
    assert code == 0, out
    code, out = run("--manifest", tmp_path / "cuts.jsonl.gz", "--split", "train", "--out", tmp_path / "b",
                    "--keep-audio")
    assert code == 0, out
    a, b = Corpus(tmp_path / "a").split("train"), Corpus(tmp_path / "b").split("train")
    assert a.utterance_ids == ["s1", "s2", "s3"] and a.transcripts == ["ab", "b a", "ba"]
    assert len(b) == 3 and b.transcripts == a.transcripts
    pcm1 = int16_at_16k(sf.read(str(tmp_path / "r1.wav"), dtype="float32")[0], 16000)
    np.testing.assert_array_equal(a.audio(0), pcm1[3200:3200 + 8000])
    r2 = sf.read(str(tmp_path / "r2.flac"), dtype="float32")[0][int(0.1 * 22050):int(0.1 * 22050) + int(0.6 * 22050)]
    np.testing.assert_array_equal(a.audio(2), int16_at_16k(r2[:, 1], 22050))      # channel 1 of the stereo file
    for i in range(3):
        np.testing.assert_array_equal(a.audio(i), b.audio(i))
        np.testing.assert_array_equal(a.features(i), b.features(i))
    code, out = run("--manifest", tmp_path / "recordings.jsonl.gz", "--split", "untranscribed", "--out",
                    tmp_path / "u", "--vocab", tmp_path / "a" / "vocab.txt")
    assert code == 0, out
    assert Corpus(tmp_path / "u").split("untranscribed").utterance_ids == ["r1", "r2"]


# ------------------------------------------------------------------------------------------------- bad input
def _bad_inputs(d: Path) -> dict:
    """name -> (manifest row, text expected in the error); every file made here."""
    write(d / "good.wav", tone(16000, 0.5, 1), 16000)
    (d / "garbage.wav").write_bytes(b"RIFF....WAVEfmt this is not audio at all" * 10)
    full = (d / "good.wav").read_bytes()
    (d / "truncated.wav").write_bytes(full[:len(full) // 2])
    write(d / "flac_full.flac", tone(16000, 1.0, 2), 16000)
    fl = (d / "flac_full.flac").read_bytes()
    (d / "truncated.flac").write_bytes(fl[:len(fl) // 2])
    write(d / "empty.wav", np.zeros(0, np.float32), 16000)
    write(d / "tiny.wav", tone(16000, 0.01, 1), 16000)
    nan = tone(16000, 0.5, 1)
    nan[100] = np.nan
    write(d / "nan.wav", nan, 16000, subtype="FLOAT")
    write(d / "at8k.wav", tone(8000, 0.5, 1), 8000)
    return {
        "unreadable": ({"audio_filepath": "garbage.wav", "text": "ab"}, "not a readable audio file"),
        "truncated wav": ({"audio_filepath": "truncated.wav", "duration": 0.5, "text": "ab"}, "truncated"),
        "truncated flac": ({"audio_filepath": "truncated.flac", "text": "ab"}, "truncated"),
        "missing": ({"audio_filepath": "nowhere.wav", "text": "ab"}, "audio file not found"),
        "zero length": ({"audio_filepath": "empty.wav", "text": "ab"}, "no samples"),
        "shorter than a frame": ({"audio_filepath": "tiny.wav", "text": "ab"}, "shorter than one frame"),
        "nan": ({"audio_filepath": "nan.wav", "text": "ab"}, "NaN"),
        "past the end": ({"audio_filepath": "good.wav", "offset": 0.3, "duration": 0.4, "text": "ab"},
                         "runs past the end of the file"),
        "duplicate id": ({"audio_filepath": "good.wav", "id": "dup", "text": "ab"}, "duplicate id"),
        "rate without resampling": ({"audio_filepath": "at8k.wav", "text": "ab"}, "resampling is off"),
        "outside the vocabulary": ({"audio_filepath": "good.wav", "text": "abz"}, "not in the vocabulary: 'z'"),
    }


def test_each_bad_input_is_a_one_line_error_naming_row_and_file(tmp_path):
    cases = _bad_inputs(tmp_path)
    (tmp_path / "vocab.txt").write_text("\n".join([BLANK, "|", "a", "b"]) + "\n")
    for name, (row, expect) in cases.items():
        good = {"audio_filepath": "good.wav", "id": "dup" if name == "duplicate id" else "ok", "text": "ab"}
        m = tmp_path / f"{name.replace(' ', '_')}.json"
        bad = {"id": "bad", **row} if name != "duplicate id" else row
        m.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
        out_dir = tmp_path / f"out_{name.replace(' ', '_')}"
        extra = ["--no-resample"] if name == "rate without resampling" else []
        code, out = run("--manifest", m, "--split", "train", "--out", out_dir, "--vocab", tmp_path / "vocab.txt",
                        *extra)
        lines = [x for x in out.strip().splitlines() if x.strip()]
        assert code == 1 and len(lines) == 1, (name, out)
        assert f"{m.name}:2: utterance" in lines[0] and row["audio_filepath"] in lines[0] and expect in lines[0], \
            (name, lines[0])
        assert not out_dir.exists(), name


def test_skip_invalid_leaves_bad_rows_out_and_reports_them(tmp_path):
    cases = _bad_inputs(tmp_path)
    (tmp_path / "vocab.txt").write_text("\n".join([BLANK, "|", "a", "b"]) + "\n")
    rows = [{"audio_filepath": "good.wav", "id": "dup", "text": "ab"},
            {"audio_filepath": "good.wav", "id": "ok2", "text": "b a"}]
    for name, (row, _) in cases.items():
        if name != "rate without resampling":
            rows.append({"id": f"bad {name}", **row} if name != "duplicate id" else row)
    (tmp_path / "m.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out = run("--manifest", tmp_path / "m.json", "--split", "train", "--out", tmp_path / "c", "--vocab",
                    tmp_path / "vocab.txt", "--skip-invalid")
    assert code == 0, out
    c = Corpus(tmp_path / "c")
    assert c.split("train").utterance_ids == ["dup", "ok2"]
    report = (tmp_path / "c" / "import_skipped.tsv").read_text().splitlines()
    assert report[0] == "id\tsplit\trow\tfile\treason" and len(report) == 1 + len(cases) - 1
    reasons = {line.split("\t")[0]: line.split("\t")[4] for line in report[1:]}
    for name, (_, expect) in cases.items():
        if name not in ("rate without resampling", "duplicate id"):
            assert expect in reasons[f"bad {name}"], (name, reasons)
    assert "duplicate id" in reasons["dup"]
    assert "skipped 10 invalid rows" in out


def test_manifest_errors_are_one_line(tmp_path):
    m = nemo_corpus(tmp_path, split_field=False)
    code, out = run("--manifest", m, "--out", tmp_path / "c")
    assert code == 1 and "manifest.json:1: no split" in out
    code, out = run("--manifest", m, "--manifest", m, "--split", "train", "--out", tmp_path / "c")
    assert code == 1 and "2 --manifest but 1 --split" in out
    (tmp_path / "x.json").write_text('{"audio_filepath": 3}\n')
    code, out = run("--manifest", tmp_path / "x.json", "--format", "nemo", "--split", "t", "--out", tmp_path / "c")
    assert code == 1 and "x.json:1: missing key 'audio_filepath'" in out
    code, out = run("--manifest", m, "--split", "train", "--out", tmp_path / "c", "--cmvn", "global",
                    "--cmvn-split", "nope")
    assert code == 1 and "split 'nope'" in out
    assert not (tmp_path / "c").exists()


# ------------------------------------------------------------------------------------------------ resumable
def test_a_failed_import_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(audio_import, "CHUNK_UTTERANCES", 2)
    m = nemo_corpus(tmp_path, n=8)
    assert run("--manifest", m, "--out", tmp_path / "ref", "--keep-audio", "--cmvn", "global")[0] == 0
    real, calls = audio_import.compute_chunk, []

    def dies_on_the_third(task):
        calls.append(task["path"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(task)
    monkeypatch.setattr(audio_import, "compute_chunk", dies_on_the_third)
    code, _ = run("--manifest", m, "--out", tmp_path / "c", "--keep-audio", "--cmvn", "global")
    assert code != 0 and not (tmp_path / "c").exists()
    work = tmp_path / ".c.importing"
    assert len(list(work.glob("*.npz"))) == 2
    calls.clear()
    monkeypatch.setattr(audio_import, "compute_chunk", lambda task: (calls.append(task["path"]), real(task))[1])
    code, out = run("--manifest", m, "--out", tmp_path / "c", "--keep-audio", "--cmvn", "global")
    assert code == 0 and "resuming" in out and "2 chunks already computed" in out
    assert len(calls) == 2                       # 4 chunks in all: the 2 stored ones were not computed again
    for name in ("train.h5", "dev.h5", "corpus.json"):
        assert (tmp_path / "ref" / name).read_bytes() == (tmp_path / "c" / name).read_bytes(), name
    assert not work.exists()


def test_an_audio_file_changed_since_its_chunk_is_computed_again(tmp_path, monkeypatch):
    monkeypatch.setattr(audio_import, "CHUNK_UTTERANCES", 2)
    m = nemo_corpus(tmp_path, n=6)
    real = audio_import.compute_chunk
    monkeypatch.setattr(audio_import, "compute_chunk",
                        lambda task: real(task) if "train" not in task["path"] or "0000001" not in task["path"] else (_ for _ in ()).throw(
                            KeyboardInterrupt()))
    assert run("--manifest", m, "--out", tmp_path / "c")[0] != 0
    write(tmp_path / "wav" / "u0.wav", tone(16000, 0.3, 9), 16000)         # chunk 0's file changes
    os.utime(tmp_path / "wav" / "u0.wav", ns=(1, 1))
    monkeypatch.setattr(audio_import, "compute_chunk", real)
    assert run("--manifest", m, "--out", tmp_path / "c")[0] == 0
    x = int16_at_16k(sf.read(str(tmp_path / "wav" / "u0.wav"), dtype="float32")[0], 16000)
    np.testing.assert_array_equal(Corpus(tmp_path / "c").split("train").features(0), knf_fbank(x))


@pytest.mark.slow
def test_a_killed_import_process_resumes(tmp_path):
    """SIGKILL mid-import (a real process, 2 workers), then the same command: the corpus of an uninterrupted run."""
    m = nemo_corpus(tmp_path, n=40)
    code = ("import sys; from offline_kd.data import audio_import as a; a.CHUNK_UTTERANCES = 1; "
            "from offline_kd.cli import main; main(sys.argv[1:])")
    args = ["data", "import", "--manifest", str(m), "--keep-audio", "--jobs", "2", "--no-progress"]
    subprocess.run([sys.executable, "-c", code, *args, "--out", str(tmp_path / "ref")], check=True,
                   capture_output=True)
    p = subprocess.Popen([sys.executable, "-c", code, *args, "--out", str(tmp_path / "c")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    work = tmp_path / ".c.importing"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(work.glob("*.npz"))) < 5:
        time.sleep(0.01)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert not (tmp_path / "c").exists() and 5 <= len(list(work.glob("*.npz"))) < 40
    res = subprocess.run([sys.executable, "-c", code, *args, "--out", str(tmp_path / "c")], capture_output=True,
                         text=True)
    assert res.returncode == 0 and "resuming" in res.stderr, res.stderr
    for name in ("train.h5", "dev.h5", "corpus.json"):
        assert (tmp_path / "ref" / name).read_bytes() == (tmp_path / "c" / name).read_bytes(), name


def test_kept_audio_is_fingerprinted_like_the_features(tmp_path):
    import h5py
    from offline_kd.errors import OfflineKDError
    m = nemo_corpus(tmp_path)
    assert run("--manifest", m, "--out", tmp_path / "c", "--keep-audio")[0] == 0
    res = CliRunner().invoke(main, ["data", "validate", "--corpus", str(tmp_path / "c"), "--split", "train",
                                    "--split", "dev"])
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "c" / "train.h5", "r+") as f:
        start = int(f["audio_offsets"][2])
        f["audio"][start] = f["audio"][start] + 1                  # one sample of utterance u2 changes
    res = CliRunner().invoke(main, ["data", "validate", "--corpus", str(tmp_path / "c"), "--split", "train"])
    assert res.exit_code == 1 and "kept audio differs from its stored audio_sha256" in res.output and "u2" in \
        res.output
    r = Corpus(tmp_path / "c").split("train")
    r.verify_reads()
    r.audio(1)
    with pytest.raises(OfflineKDError, match="utterance u2: its audio differs"):
        r.audio(2)



# ------------------------------------------------------------------------------------ found in review (each failed)
def test_a_resumed_import_never_reuses_a_chunk_for_other_rows(tmp_path, monkeypatch):
    """Segments of one file share its size and mtime: a chunk is reused only for the very rows it was made from,
    even when a changed --vocab moves rows from one chunk to another between the two runs."""
    monkeypatch.setattr(audio_import, "CHUNK_UTTERANCES", 2)
    write(tmp_path / "long.wav", tone(16000, 2.0, 3), 16000)
    rows = [{"audio_filepath": "long.wav", "offset": 0.3 * i, "duration": 0.3, "text": "z" if i == 0 else "ab"}
            for i in range(6)]
    (tmp_path / "m.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "v1.txt").write_text("\n".join([BLANK, "|", "a", "b"]) + "\n")
    (tmp_path / "v2.txt").write_text("\n".join([BLANK, "|", "a", "b", "z"]) + "\n")
    base = ["--manifest", tmp_path / "m.json", "--split", "train", "--skip-invalid", "--keep-audio"]
    real, calls = audio_import.compute_chunk, []

    def dies_on_the_second(task):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(task)
    monkeypatch.setattr(audio_import, "compute_chunk", dies_on_the_second)
    assert run(*base, "--vocab", tmp_path / "v1.txt", "--out", tmp_path / "c")[0] != 0
    monkeypatch.setattr(audio_import, "compute_chunk", real)
    assert run(*base, "--vocab", tmp_path / "v2.txt", "--out", tmp_path / "c")[0] == 0
    assert run(*base, "--vocab", tmp_path / "v2.txt", "--out", tmp_path / "ref")[0] == 0
    assert (tmp_path / "c/train.h5").read_bytes() == (tmp_path / "ref/train.h5").read_bytes()


def test_a_truncated_wav_without_a_duration_is_an_error(tmp_path):
    write(tmp_path / "good.wav", tone(16000, 1.0, 1), 16000)
    full = (tmp_path / "good.wav").read_bytes()
    (tmp_path / "t.wav").write_bytes(full[:len(full) // 2])
    (tmp_path / "m.tsv").write_text("ok\tgood.wav\tab\nt\tt.wav\tab\n")
    code, out = run("--manifest", tmp_path / "m.tsv", "--split", "train", "--out", tmp_path / "c")
    assert code == 1 and "m.tsv:2: utterance t" in out and "truncated" in out, out


@pytest.mark.parametrize("field, value", [("offset", "NaN"), ("duration", "Infinity"), ("duration", "-1")])
def test_a_non_finite_or_negative_number_in_a_manifest_is_one_line(tmp_path, field, value):
    write(tmp_path / "a.wav", tone(16000, 0.5, 1), 16000)
    (tmp_path / "m.json").write_text('{"audio_filepath": "a.wav", "text": "ab", "%s": %s}\n' % (field, value))
    code, out = run("--manifest", tmp_path / "m.json", "--split", "train", "--out", tmp_path / "c")
    assert code == 1 and f"m.json:1: '{field}' must be a number >= 0" in out, out


@pytest.mark.parametrize("split", ["train/clean", "..", "a@0", ".hidden"])
def test_a_split_name_that_is_not_a_file_name_is_refused(tmp_path, split):
    m = nemo_corpus(tmp_path, n=2, split_field=False)
    code, out = run("--manifest", m, "--split", split, "--out", tmp_path / "c")
    assert code == 1 and f"split name {split!r}" in out, out
    assert not (tmp_path / "c").exists()


def test_every_row_invalid_names_the_first_reason(tmp_path):
    (tmp_path / "m.tsv").write_text("a\tnope.wav\tab\n")
    code, out = run("--manifest", tmp_path / "m.tsv", "--split", "train", "--out", tmp_path / "c", "--skip-invalid")
    assert code == 1 and "split 'train': every row is invalid (first: m.tsv:1: audio file not found)" in out, out


def test_nemo_rows_whose_file_names_collide_take_their_paths(tmp_path):
    for spk in ("FCJF0", "MDAB0"):
        (tmp_path / "DR1" / spk).mkdir(parents=True)
        write(tmp_path / "DR1" / spk / "SA1.wav", tone(16000, 0.4, 1), 16000)
    write(tmp_path / "other.wav", tone(16000, 0.4, 2), 16000)
    rows = [{"audio_filepath": f"DR1/{spk}/SA1.wav", "text": "ab"} for spk in ("FCJF0", "MDAB0")]
    rows.append({"audio_filepath": "other.wav", "text": "b"})
    (tmp_path / "m.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out = run("--manifest", tmp_path / "m.json", "--split", "train", "--out", tmp_path / "c")
    assert code == 0, out
    assert Corpus(tmp_path / "c").split("train").utterance_ids == ["DR1-FCJF0-SA1", "DR1-MDAB0-SA1", "other"]


def test_colliding_names_give_the_same_ids_wherever_the_corpus_lies(tmp_path):
    """Absolute paths in the manifest, the corpus in two places: the ids come from the path relative to the
    manifest's folder, so both imports give the same ids (issue #47: they held the absolute path)."""
    import shutil
    ids = []
    for where in ("first/place", "another"):
        root = tmp_path / where / "timit"
        for spk in ("FCJF0", "MDAB0"):
            (root / "DR1" / spk).mkdir(parents=True)
            write(root / "DR1" / spk / "SA1.wav", tone(16000, 0.4, 1), 16000)
        rows = [{"audio_filepath": str(root / "DR1" / spk / "SA1.wav"), "text": "ab"} for spk in ("FCJF0", "MDAB0")]
        (root / "m.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
        code, out = run("--manifest", root / "m.json", "--split", "train", "--out", tmp_path / where / "c")
        assert code == 0, out
        ids.append(Corpus(tmp_path / where / "c").split("train").utterance_ids)
        shutil.rmtree(root)
    assert ids[0] == ids[1] == ["DR1-FCJF0-SA1", "DR1-MDAB0-SA1"]


def test_skip_invalid_leaves_out_textless_rows_of_a_transcribed_split(tmp_path):
    m = nemo_corpus(tmp_path, n=4)
    rows = [json.loads(x) for x in m.read_text().splitlines()]
    rows[1].pop("text")
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out = run("--manifest", m, "--out", tmp_path / "c")
    assert code == 1 and "1 of 2 rows have no text" in out
    code, out = run("--manifest", m, "--out", tmp_path / "c", "--skip-invalid")
    assert code == 0, out
    assert Corpus(tmp_path / "c").split("train").utterance_ids == ["u0"]
    assert "no text, in a split of transcribed rows" in (tmp_path / "c/import_skipped.tsv").read_text()


def test_long_recordings_close_a_chunk_by_duration_with_the_same_corpus(tmp_path, monkeypatch):
    m = nemo_corpus(tmp_path, n=8)
    assert run("--manifest", m, "--out", tmp_path / "ref")[0] == 0
    monkeypatch.setattr(audio_import, "CHUNK_SECONDS", 0.7)          # two or three short rows per chunk
    real, sizes = audio_import.compute_chunk, []
    monkeypatch.setattr(audio_import, "compute_chunk", lambda task: (sizes.append(len(task["rows"])), real(task))[1])
    assert run("--manifest", m, "--out", tmp_path / "c")[0] == 0
    assert max(sizes) <= 2 and len(sizes) > 4
    for name in ("train.h5", "dev.h5"):
        assert (tmp_path / "ref" / name).read_bytes() == (tmp_path / "c" / name).read_bytes()


def test_fbank_in_blocks_equals_one_call(monkeypatch):
    from offline_kd.data import frontend
    x = (np.random.default_rng(0).standard_normal(16000 * 5) * 3000).astype(np.int16)
    fb = frontend.Fbank(frontend.FbankOptions())
    whole = fb.compute(x)
    monkeypatch.setattr(frontend, "BLOCK", 4001)
    np.testing.assert_array_equal(fb.compute(x), whole)
    np.testing.assert_array_equal(whole, knf_fbank(x))
