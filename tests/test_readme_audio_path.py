"""The README's "Bring your own data" commands, run as written on WAV files and NeMo manifests made here (tiny
models appended with --set: the commands are the README's own, read from it)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TINY = {"train": ["--set", "model.hidden_dim=8", "--set", "train.epochs=1", "--set", "data.batch_size=8",
                  "--set", "train.warmup_steps=1", "--set", "train.progress=false"],
        "dump-teacher": ["--set", "dump.progress=false", "--set", "dump.batch_size=8"],
        "train-student": ["--set", "model.hidden_dim=8", "--set", "train.epochs=1", "--set", "data.batch_size=8",
                          "--set", "train.warmup_steps=1", "--set", "train.progress=false",
                          "--set", "train.accumulation_steps=1"]}


def readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Bring your own data"):text.index("## Bring your own teacher")]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    lines = [ln for ln in block.replace("\\\n", " ").splitlines() if ln.strip() and not ln.startswith("#")]
    return [shlex.split(ln) for ln in lines]


def make_audio(d: Path) -> None:
    """NeMo manifests train/dev/test; the texts use every letter and the apostrophe (29 tokens with blank and |)."""
    rng = np.random.default_rng(0)
    letters = "abcdefghijklmnopqrstuvwxyz'"
    (d / "wav").mkdir()
    for split, n in (("train", 24), ("dev", 6), ("test", 6)):
        rows = []
        for i in range(n):
            word = "".join(letters[(3 * i + k) % len(letters)] for k in range(3))
            text = f"{word} {letters[i % len(letters)]}{letters[(i + 5) % len(letters)]}"
            sec = float(rng.uniform(0.6, 0.9))
            t = np.arange(int(16000 * sec)) / 16000
            x = 0.2 * np.sin(2 * np.pi * (200 + 40 * i) * t) + 0.01 * rng.standard_normal(t.size)
            sf.write(str(d / "wav" / f"{split}{i}.wav"), x.astype(np.float32), 16000)
            rows.append({"audio_filepath": f"wav/{split}{i}.wav", "duration": round(t.size / 16000, 4), "text": text})
        (d / f"{split}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_bring_your_own_audio_as_the_readme_says(tmp_path):
    make_audio(tmp_path)
    cmds = readme_commands()
    assert [c[:3] for c in cmds] == [["offline-kd", "data", "import"], ["offline-kd", "train", "--config"],
                                     ["offline-kd", "dump-teacher", "--config"],
                                     ["offline-kd", "train-student", "--config"]]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for cmd in cmds:
        args = [a.replace("configs/", str(ROOT / "configs") + "/") for a in cmd[1:]]
        args += TINY.get(cmd[1], [])
        res = subprocess.run([sys.executable, "-m", "offline_kd", *args], cwd=tmp_path, capture_output=True,
                             text=True, env=env)
        assert res.returncode == 0, (cmd, res.stderr[-2000:])
        if cmd[1] == "data":
            assert "80-dim features (model.input_dim), 29 tokens with the blank (model.num_classes)" in res.stderr
    assert (tmp_path / "runs/mine/student/checkpoint_best.pt").is_file()
    # the cache records the corpus's front end (metadata, identity) and `cache info` prints it
    info = subprocess.run([sys.executable, "-m", "offline_kd", "cache", "info", "cache/mine.zarr"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert "corpus front end: kaldi-fbank 80 bins, 25.0 / 10.0 ms at 16000 Hz, cmvn global" in info.stdout, info
    from offline_kd.cache.reader import TeacherCache
    fe = TeacherCache(str(tmp_path / "cache/mine.zarr")).meta.extra["frontend"]
    assert fe == json.loads((tmp_path / "data/mine/corpus.json").read_text())["frontend"]
    assert json.loads((tmp_path / "data/mine/corpus.json").read_text())["frontend"]["cmvn"]["kind"] == "global"
