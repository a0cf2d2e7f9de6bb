"""The first hour with one's own data and teacher (issue #45): nothing silently wrong.

Mixed-case, punctuated transcripts against an upper-case teacher; a teacher whose tokens are mostly mapped to null;
text normalisation at import. Corpora are .npy features with such transcripts, the teacher an entry point of the
test's own (a linear layer over the features)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from helpers import write_yaml
from offline_kd.cache.reader import TeacherCache
from offline_kd.cli import main
from offline_kd.data.corpus import Corpus
from offline_kd.data.text import normalize

TEXTS = ["She found a small box, after lunch.", "Don't stop! We know it.", "A big red fox ran off.",
         "Lunch was a small affair; we left.", "It's the box of the fox?", "Small talk, big box."]
# wav2vec2-960h's kind of vocabulary: upper-case letters, "'" and "|" (those the transcripts use; #45 item 7 below)
UPPER = ["<pad>", "|"] + sorted(set(normalize(" ".join(TEXTS), "upper")) - {" "})


def features_corpus(d: Path, normalize_mode: str | None, n: int = 24) -> Path:
    rng = np.random.default_rng(0)
    (d / "f").mkdir(parents=True)
    rows = []
    for i in range(n):
        text = TEXTS[i % len(TEXTS)]
        np.save(d / "f" / f"u{i}.npy", rng.standard_normal((12 * len(text), 16)).astype(np.float32))
        rows.append({"id": f"u{i:02d}", "features": f"f/u{i}.npy", "text": text,
                     "split": "train" if i < n - 4 else "dev"})
    (d / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["data", "import", "--manifest", str(d / "m.jsonl"), "--out", str(d / "c")]
    res = CliRunner().invoke(main, args + (["--normalize", normalize_mode] if normalize_mode else []))
    assert res.exit_code == 0, res.output
    return d / "c"


TEACHER = '''
import torch

class T(torch.nn.Module):
    def __init__(self, tokens, blank=0):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.lin = torch.nn.Linear(16, len(tokens))
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(len(tokens), 16, generator=g) * 0.3)
            self.lin.bias.zero_()
        self.tokens, self.blank, self.input_dim, self.subsampling = tokens, blank, 16, 2
        self.word_delimiter = "|"

    def layer_dims(self):
        return {1: len(self.tokens)}

    def forward_with_hidden_states(self, x, lengths, layers=None):
        y = self.lin(x[:, ::2])
        return y.log_softmax(-1).transpose(0, 1), (lengths + 1) // 2, {L: y for L in (layers or [])}

def load(tokens, blank=0):
    return T(tokens, blank)
'''


def dump(tmp_path: Path, monkeypatch, corpus: Path, tokens: list[str], **extra) -> tuple[int, str, Path]:
    (tmp_path / "upper_teacher.py").write_text(TEACHER)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / f"cache-{len(list(tmp_path.glob('cache-*')))}.zarr"
    teacher = {"entry_point": "upper_teacher:load", "args": {"tokens": tokens}}
    if "vocabulary_map" in extra:
        teacher["vocabulary_map"] = extra.pop("vocabulary_map")
    cfg = write_yaml(tmp_path / "d.yaml", {"dump": {
        "teacher": teacher, "corpus": str(corpus), "output": str(out), "splits": ["train", "dev"], "layers": [1],
        "batch_size": 8, "progress": False, "device": "cpu", **extra}})
    res = CliRunner().invoke(main, ["dump-teacher", "--config", str(cfg)])
    return res.exit_code, res.output, out


def test_normalize_folds_case_removes_punctuation_and_is_recorded(tmp_path):
    assert normalize("She found a small box, after lunch.", "lower") == "she found a small box after lunch"
    assert normalize("Don’t stop! \"Well-known\"  'quoted'", "upper") == "DON'T STOP WELL KNOWN QUOTED"
    raw = Corpus(features_corpus(tmp_path / "raw", None))
    assert {"S", "s", ",", "."} <= set(raw.vocab.tokens)            # both cases and punctuation, as before
    folded = Corpus(features_corpus(tmp_path / "lower", "lower"))
    assert folded.split("train").transcripts[0] == "she found a small box after lunch"
    assert not {t for t in folded.vocab.tokens if t.isupper() or t in ",.!?;"}
    meta = json.loads((tmp_path / "lower" / "c" / "corpus.json").read_text())
    assert meta["text_normalization"]["case"] == "lower" and "punctuation" in meta["text_normalization"]


def test_transcript_classes_the_teacher_cannot_reach_are_refused(tmp_path, monkeypatch):
    """Mixed-case transcripts against an upper-case teacher: the teacher's 'A' reaches the student's 'A', the common
    lower-case 'a' gets 1e-30. The dump refuses, naming the classes and the way out; normalised transcripts dump."""
    code, out, cache = dump(tmp_path, monkeypatch, features_corpus(tmp_path / "raw", None), UPPER)
    assert code != 0 and "Traceback" not in out
    line = out.strip().splitlines()[-1]
    assert "student classes that the transcripts of" in line and "'a' (" in line and "','" in line, line
    assert "--normalize lower" in line and "vocabulary_map" in line and "dump.allow_unreached" in line
    assert not cache.exists()
    for mode in ("upper", "lower"):          # the teacher's case, or case-folded onto it: every class reached
        code, out, cache = dump(tmp_path, monkeypatch, features_corpus(tmp_path / mode, mode), UPPER)
        assert code == 0, out
        assert not TeacherCache(str(cache)).meta.extra.get("teacher_coverage", {}).get("unreached_in_transcripts")
    # told to, it dumps, and says so in the cache
    code, out, cache = dump(tmp_path, monkeypatch, Corpus(tmp_path / "raw" / "c").dir, UPPER, allow_unreached=True)
    assert code == 0 and "WARNING: student classes" in out, out
    info = CliRunner().invoke(main, ["cache", "info", str(cache)]).output
    assert "unreached tokens the transcripts use (dumped with dump.allow_unreached): " in info, info
    assert "'a' 44x" in info.split("transcripts use")[1].splitlines()[0]


def test_a_teacher_mostly_dropped_is_refused_with_the_mass_it_loses(tmp_path, monkeypatch):
    """A sub-word teacher whose pieces are mapped to null: the dump reports the probability mass dropped (mean and
    worst utterance) and refuses above dump.max_dropped_mass; cache info lists every unreached class."""
    corpus = features_corpus(tmp_path / "upper", "upper")
    pieces = ["▁THE", "▁A", "ING", "ED", "▁S", "ER", "▁B", "OX", "▁F", "UN", "CH", "▁W"]
    tokens = UPPER[:3] + list("ABCDEFGH") + pieces
    (tmp_path / "map.yaml").write_text("".join(f"{json.dumps(p)}: null\n" for p in pieces))
    code, out, cache = dump(tmp_path, monkeypatch, corpus, tokens, vocabulary_map=str(tmp_path / "map.yaml"),
                            allow_unreached=True)
    line = out.strip().splitlines()[-1]
    assert code != 0 and "of the teacher's probability falls on classes its vocabulary map drops" in line, out
    assert "worst utterance u" in line and "dump.max_dropped_mass (5%)" in line
    assert not cache.exists()
    code, out, cache = dump(tmp_path, monkeypatch, corpus, tokens, vocabulary_map=str(tmp_path / "map.yaml"),
                            allow_unreached=True, max_dropped_mass=1.0)
    assert code == 0, out
    d = TeacherCache(str(cache)).meta.extra["teacher_coverage"]["dropped_mass"]
    assert 0.3 < d["mean"] <= d["worst"] < 1.0 and d["utterances"] == 20
    info = CliRunner().invoke(main, ["cache", "info", str(cache)]).output
    unreached = [t for t in Corpus(corpus).vocab.tokens if t not in tokens and t != "<blank>"]
    assert len(unreached) > 6
    assert f"student tokens no teacher class reaches ({len(unreached)}): " + ", ".join(map(repr, unreached)) in info
    assert "teacher probability on dropped classes: mean " in info


def test_teacher_tokens_the_corpus_never_saw_name_its_vocab_file_and_both_ways_out(tmp_path, monkeypatch):
    corpus = features_corpus(tmp_path / "upper", "upper")
    code, out, cache = dump(tmp_path, monkeypatch, corpus, UPPER + ["Q", "Z"])
    line = out.strip().splitlines()[-1]
    assert code != 0 and "the teacher's tokens 'Q', 'Z' have no counterpart" in line, out
    assert f"{corpus}/vocab.txt: `data import` builds it from the transcripts" in line
    assert "`--vocab FILE`" in line and "vocabulary_map" in line


def test_verify_reuses_the_vocabulary_map_the_cache_recorded(tmp_path, monkeypatch):
    """`cache verify --teacher` without the mapping options takes those the cache was dumped with; where the map
    file is gone, the mapping the cache records, pair for pair."""
    corpus = features_corpus(tmp_path / "upper", "upper")
    tokens = UPPER + ["Q"]
    (tmp_path / "map.yaml").write_text('"Q": null\n')
    code, out, cache = dump(tmp_path, monkeypatch, corpus, tokens, vocabulary_map=str(tmp_path / "map.yaml"),
                            max_dropped_mass=1.0)
    assert code == 0, out
    teacher = json.dumps({"entry_point": "upper_teacher:load", "args": {"tokens": tokens}})
    for gone in (False, True):
        if gone:
            (tmp_path / "map.yaml").unlink()
        res = CliRunner().invoke(main, ["cache", "verify", str(cache), "--teacher", teacher, "--sample", "4"])
        assert res.exit_code == 0, res.output
        assert "using the vocabulary_map the cache was dumped with" in res.output
