"""BeamSearchDecoder against real pyctcdecode + KenLM (no mocks).

A hand-made log-prob matrix whose greedy (and LM-free beam) reading is "the kat"; an LM that
strongly prefers "the cat" must flip the ambiguous c/k frame.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest


pytest.importorskip("pyctcdecode")
pytest.importorskip("kenlm")

from helpers import find_tool
from offline_kd.decoding.beam import BeamSearchDecoder, read_arpa_unigrams  # noqa: E402

CHAR_TOKENS = ["<blank>", "|", "t", "h", "e", "c", "k", "a"]
WORDS = {"the": "w0007", "cat": "w0042", "kat": "w0043"}  # text word -> word-vocab unit
WORD_TOKENS = ["<blank>", "w0007", "w0042", "w0043"]

# 2-gram ARPA (log10): P(cat | the) >> P(kat | the); all words in-vocabulary.
ARPA = """\\data\\
ngram 1=6
ngram 2=5

\\1-grams:
-1.0\t<unk>\t0
-99\t<s>\t-0.5
-0.7\t</s>\t0
-0.7\tthe\t-0.3
-0.8\tcat\t-0.3
-3.0\tkat\t-0.3

\\2-grams:
-0.1\t<s> the
-0.1\tthe cat
-3.0\tthe kat
-0.1\tcat </s>
-0.5\tkat </s>

\\end\\
"""


def _frames(vocab: list[str], spec: list[dict[str, float]]) -> np.ndarray:
    """(T, V) float32 log-probs; each frame gives some probabilities, the rest share the remainder."""
    out = np.zeros((len(spec), len(vocab)), dtype=np.float64)
    for t, probs in enumerate(spec):
        rest = (1.0 - sum(probs.values())) / (len(vocab) - len(probs))
        out[t] = [probs.get(tok, rest) for tok in vocab]
    return np.log(out).astype(np.float32)


def char_log_probs() -> np.ndarray:
    """t h e | {k .55, c .40} a t, with blanks between: greedy gives 'the kat'."""
    seq = [{"t": .9}, {"<blank>": .9}, {"h": .9}, {"e": .9}, {"|": .9},
           {"k": .55, "c": .40}, {"<blank>": .9}, {"a": .9}, {"t": .9}, {"<blank>": .9}]
    return _frames(CHAR_TOKENS, seq)


def word_log_probs() -> np.ndarray:
    """the {kat .55, cat .40}: greedy gives 'w0007 w0043'."""
    seq = [{"w0007": .9}, {"<blank>": .9}, {"w0043": .55, "w0042": .40}, {"<blank>": .9}]
    return _frames(WORD_TOKENS, seq)


def greedy(lp: np.ndarray, tokens: list[str], sep: str | None) -> str:
    """Argmax per frame, collapse repeats, drop blank (id 0)."""
    ids = lp.argmax(-1)
    keep = [int(i) for k, i in enumerate(ids) if i != 0 and (k == 0 or i != ids[k - 1])]
    if sep is None:
        return " ".join(tokens[i] for i in keep)
    return " ".join("".join(tokens[i] for i in keep).split(sep)).strip()


def _to_units(text: str) -> str:
    return " ".join(WORDS[w] for w in text.split())


@pytest.fixture(params=["handmade-arpa", "lmplz-arpa", "lmplz-binary"])
def lm_paths(request, tmp_path):
    """(char-level-text LM, word-unit LM) paths for the variant; lmplz ones skip without lmplz."""
    paths = []
    for name, mapping in (("char", lambda s: s), ("word", _to_units)):
        if request.param == "handmade-arpa":
            text = ARPA
            for w in ("cat", "kat", "the"):  # word-unit copy of the same model
                text = text.replace(f"\t{w}", f"\t{mapping(w)}").replace(f" {w}", f" {mapping(w)}")
            path = tmp_path / f"{name}.arpa"
            path.write_text(text)
        else:
            lmplz, build_binary = find_tool("lmplz"), find_tool("build_binary")
            if lmplz is None or build_binary is None:
                pytest.skip("lmplz/build_binary not installed (scripts/install_kenlm_tools.sh)")
            corpus = "\n".join([mapping("the cat")] * 30 + [mapping("kat")] + [mapping("cat")] * 5)
            path = tmp_path / f"{name}.arpa"
            with open(path, "w") as f:
                subprocess.run([lmplz, "-o", "3", "--discount_fallback",
                                "-S", "50M", "--vocab_estimate", "1000"], input=corpus + "\n",
                               text=True, stdout=f, stderr=subprocess.DEVNULL, check=True)
            if request.param == "lmplz-binary":
                binary = tmp_path / f"{name}.bin"
                subprocess.run([build_binary, str(path), str(binary)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
                path = binary
        paths.append(str(path))
    return paths


def test_greedy_reading_is_kat():
    assert greedy(char_log_probs(), CHAR_TOKENS, "|") == "the kat"
    assert greedy(word_log_probs(), WORD_TOKENS, None) == "w0007 w0043"


def test_arpa_unigrams(tmp_path):
    (tmp_path / "lm.arpa").write_text(ARPA)
    assert sorted(read_arpa_unigrams(str(tmp_path / "lm.arpa"))) == ["cat", "kat", "the"]


def test_char_beam_without_lm_matches_greedy():
    dec = BeamSearchDecoder(CHAR_TOKENS, "char", "|")
    assert dec.decode([char_log_probs()]) == ["the kat"]


def test_word_beam_without_lm_matches_greedy():
    dec = BeamSearchDecoder(WORD_TOKENS, "word", None)
    assert dec.decode([word_log_probs()]) == ["w0007 w0043"]


def test_char_beam_with_lm_fixes_word(lm_paths):
    dec = BeamSearchDecoder(CHAR_TOKENS, "char", "|", lm_path=lm_paths[0], alpha=1.0, beta=0.5)
    assert dec.decode([char_log_probs()]) == ["the cat"]


def test_word_beam_with_lm_fixes_word(lm_paths):
    dec = BeamSearchDecoder(WORD_TOKENS, "word", None, lm_path=lm_paths[1], alpha=1.0, beta=0.5)
    assert dec.decode([word_log_probs()]) == ["w0007 w0042"]


def test_parallel_matches_sequential(tmp_path):
    path = tmp_path / "lm.arpa"
    path.write_text(ARPA)
    rng = np.random.default_rng(0)
    batch = [char_log_probs(), char_log_probs()[:5], np.zeros((0, len(CHAR_TOKENS)), np.float32)]
    for _ in range(5):  # random (T, V) log-softmax matrices
        x = rng.normal(size=(int(rng.integers(5, 30)), len(CHAR_TOKENS))) * 3
        batch.append((x - np.log(np.exp(x).sum(-1, keepdims=True))).astype(np.float32))
    kw = dict(lm_path=str(path), alpha=1.0, beta=0.5)
    one = BeamSearchDecoder(CHAR_TOKENS, "char", "|", num_processes=1, **kw).decode(batch)
    two = BeamSearchDecoder(CHAR_TOKENS, "char", "|", num_processes=2, **kw).decode(batch)
    assert one == two
    assert one[0] == "the cat" and one[2] == ""


def test_missing_lm_raises(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        BeamSearchDecoder(CHAR_TOKENS, "char", "|", lm_path=str(tmp_path / "nope.arpa"))


def test_vocab_size_mismatch_raises():
    dec = BeamSearchDecoder(CHAR_TOKENS, "char", "|")
    with pytest.raises(ValueError, match="vocabulary size"):
        dec.decode([np.zeros((4, len(CHAR_TOKENS) + 1), np.float32)])


@pytest.mark.parametrize("name, content", [
    ("garbage.arpa", bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8))),
    ("garbage.bin", bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8))),
    ("latin1.arpa", ARPA.encode() + "\n\\end\\\ncaf\xe9\n".encode("latin-1")),
])
def test_garbage_lm_is_named_before_kenlm_reads_it(tmp_path, capfd, name, content):
    """#13 item 6: a file that is no LM gets a message naming it and what it should be (KenLM prints nothing)."""
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=f"language model {tmp_path / name}: (neither an ARPA file|an ARPA file "
                                         f"must be UTF-8)"):
        BeamSearchDecoder(CHAR_TOKENS, "char", "|", lm_path=str(tmp_path / name))
    assert "****" not in capfd.readouterr().err
