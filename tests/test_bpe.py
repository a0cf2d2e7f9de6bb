"""Sub-word (sentencepiece BPE) vocabularies, issue #45 item 6: import with a given model or one learnt from the
training transcripts, the teacher's own vocabulary (`--vocab-from-teacher`), greedy and beam-search decoding with a
word LM on pieces, word timings, sherpa-onnx tokens, and a NeMo-style BPE teacher (blank last) distilled into a BPE
student with no token dropped."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

pytest.importorskip("sentencepiece")

from helpers import write_unigram_arpa, write_yaml  # noqa: E402
from offline_kd.cache.reader import TeacherCache  # noqa: E402
from offline_kd.cli import main  # noqa: E402
from offline_kd.data.bpe import train_bpe  # noqa: E402
from offline_kd.data.corpus import Corpus  # noqa: E402
from offline_kd.data.vocab import WORD_START, Vocabulary  # noqa: E402
from offline_kd.decoding.beam import BeamSearchDecoder  # noqa: E402
from offline_kd.errors import OfflineKDError  # noqa: E402
from offline_kd.inference.export import tokens_txt  # noqa: E402
from offline_kd.inference.timing import greedy_words  # noqa: E402
from test_first_hour import TEACHER as LINEAR_TEACHER  # noqa: E402

TEXTS = ["She found a small box, after lunch.", "Don't stop! We know it.", "A big red fox ran off.",
         "Lunch was a small affair; we left.", "It's the box of the fox?", "Small talk, big box.",
         "The fox and the box were found.", "We know the small red fox."]


def _model(vocab_size=40) -> bytes:
    texts = [" ".join(t.lower().replace(",", "").replace(".", "").replace("!", "").replace("?", "")
                      .replace(";", "").split()) for t in TEXTS]
    return train_bpe(texts, texts, vocab_size)


def corpus(d: Path, *extra: str, n: int = 24, untranscribed: int = 0) -> tuple[int, str, Path]:
    rng = np.random.default_rng(0)
    (d / "f").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        text = TEXTS[i % len(TEXTS)]
        np.save(d / "f" / f"u{i}.npy", rng.standard_normal((12 * len(text), 16)).astype(np.float32))
        rows.append({"id": f"u{i:02d}", "features": f"f/u{i}.npy", "text": text,
                     "split": "train" if i < n - 4 else "dev"})
    for i in range(untranscribed):
        np.save(d / "f" / f"x{i}.npy", rng.standard_normal((200, 16)).astype(np.float32))
        rows.append({"id": f"x{i:02d}", "features": f"f/x{i}.npy", "split": "untranscribed"})
    (d / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = d / f"c{len(list(d.glob('c*')))}"
    res = CliRunner().invoke(main, ["data", "import", "--manifest", str(d / "m.jsonl"), "--out", str(out), *extra])
    return res.exit_code, res.output, out


# --------------------------------------------------------------------------------------------------- vocabulary
def test_a_bpe_vocabulary_encodes_decodes_and_travels_with_its_model(tmp_path):
    v = Vocabulary.from_bpe_model(_model())
    assert v.tokenizer == "bpe" and v.tokens[0] == "<blank>" and v.tokens[1] == "<unk>"
    ids = v.encode("the small fox")
    assert 0 not in ids and v.decode(ids) == "the small fox"
    assert v.starts_word(ids[0]) and v.tokens[ids[0]].startswith(WORD_START)
    assert v.unknown_units("the zebra") == ["z"] or "z" in "".join(v.unknown_units("the zebra"))
    assert Vocabulary.from_dict(json.loads(json.dumps(v.to_dict()))) == v
    w = pickle.loads(pickle.dumps(v))
    assert w == v and w.encode("the small fox") == ids
    v.save(tmp_path)
    assert Vocabulary.load(tmp_path / "vocab.txt", "bpe", None) == v
    other = Vocabulary.from_bpe_model(_model(42))
    assert other.sha256 != v.sha256
    (tmp_path / "bpe.model").unlink()
    with pytest.raises(OfflineKDError, match="bpe.model"):
        Vocabulary.load(tmp_path / "vocab.txt", "bpe", None)


def test_a_learnt_bpe_model_is_the_same_bytes_from_the_same_transcripts():
    assert _model() == _model()


# ------------------------------------------------------------------------------------------------------- import
def test_import_learns_a_bpe_vocabulary_from_the_training_transcripts(tmp_path):
    code, out, c = corpus(tmp_path, "--tokenizer", "bpe", "--bpe-vocab-size", "40", "--normalize", "lower")
    assert code == 0, out
    cor = Corpus(c)
    assert cor.vocab.tokenizer == "bpe" and len(cor.vocab) == 41 and (c / "bpe.model").is_file()
    assert json.loads((c / "corpus.json").read_text())["tokenizer"] == "bpe"
    code, out, c2 = corpus(tmp_path, "--tokenizer", "bpe", "--bpe-vocab-size", "40", "--normalize", "lower")
    assert code == 0 and (c2 / "bpe.model").read_bytes() == (c / "bpe.model").read_bytes()
    # every transcript, dev's included, encodes without an unknown piece and decodes back
    reader = cor.split("dev")
    for text in reader.transcripts:
        assert cor.vocab.decode(cor.vocab.encode(text)) == text


def test_import_with_a_given_sentencepiece_model(tmp_path):
    (tmp_path / "m.model").write_bytes(_model())
    code, out, c = corpus(tmp_path, "--tokenizer", "bpe", "--bpe-model", str(tmp_path / "m.model"),
                          "--normalize", "lower")
    assert code == 0, out
    assert (c / "bpe.model").read_bytes() == (tmp_path / "m.model").read_bytes()


@pytest.mark.parametrize("args, says", [
    (["--tokenizer", "bpe"], "--bpe-model FILE"),
    (["--tokenizer", "bpe", "--bpe-vocab-size", "40", "--vocab", "v.txt"], "instead of --vocab"),
    (["--bpe-vocab-size", "40"], "go with --tokenizer bpe"),
    (["--tokenizer", "bpe", "--bpe-vocab-size", "5", "--normalize", "lower"], "at least"),
    (["--tokenizer", "bpe", "--bpe-model", "missing.model"], "file not found"),
])
def test_bpe_import_mistakes_are_one_line_errors(tmp_path, args, says):
    code, out, c = corpus(tmp_path, *args)
    assert code != 0 and says in out and "Traceback" not in out
    assert not c.exists()


def test_a_transcript_character_the_given_model_lacks_names_the_utterance(tmp_path):
    (tmp_path / "m.model").write_bytes(_model())
    code, out, _ = corpus(tmp_path, "--tokenizer", "bpe", "--bpe-model", str(tmp_path / "m.model"))   # no --normalize
    assert code != 0 and "u00" in out and "Traceback" not in out


# ----------------------------------------------------------------------------------------- the teacher's vocabulary
def _hf_dir(d: Path, vocab: dict, sp_model: bytes | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({"model_type": "wav2vec2", "vocab_size": len(vocab),
                                               "pad_token_id": vocab["<pad>"]}))
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "tokenizer_config.json").write_text(json.dumps({"word_delimiter_token": "|", "unk_token": "<unk>",
                                                         "bos_token": "<s>", "eos_token": "</s>"}))
    if sp_model is not None:
        (d / "tokenizer.model").write_bytes(sp_model)
    return d


def test_vocab_from_a_wav2vec2_960h_style_teacher(tmp_path):
    letters = list("ETAONIHSRDLUMWCFGYPBVK'XJQZ")
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, **{c: 5 + i for i, c in enumerate(letters)}}
    d = _hf_dir(tmp_path / "w2v", vocab)
    code, out, c = corpus(tmp_path, "--vocab-from-teacher", str(d), "--normalize", "upper")
    assert code == 0, out
    v = Corpus(c).vocab
    assert v.tokenizer == "char" and v.word_separator == "|" and v.tokens == ("<blank>", "|", *letters)


def test_vocab_from_a_sub_word_hf_teacher_needs_its_sentencepiece_model(tmp_path):
    model = _model()
    pieces = Vocabulary.from_bpe_model(model).tokens[1:]
    vocab = {"<pad>": 0, **{p: i + 1 for i, p in enumerate(pieces)}}
    d = _hf_dir(tmp_path / "sub", vocab)
    code, out, _ = corpus(tmp_path, "--vocab-from-teacher", str(d), "--normalize", "lower")
    assert code != 0 and "tokenizer.model" in out and "--bpe-model" in out
    _hf_dir(d, vocab, model)
    code, out, c = corpus(tmp_path, "--vocab-from-teacher", str(d), "--normalize", "lower")
    assert code == 0, out
    assert Corpus(c).vocab == Vocabulary.from_bpe_model(model)


# --------------------------------------------------------------------------------------------------- decoding
def _one_hot_path(vocab: Vocabulary, text: str) -> np.ndarray:
    ids = vocab.encode(text)
    frames = []
    for i in ids:
        frames += [i, 0]
    lp = np.full((len(frames), len(vocab)), -20.0, dtype=np.float32)
    lp[np.arange(len(frames)), frames] = 0.0
    return lp - np.log(np.exp(lp).sum(1, keepdims=True))


def test_beam_search_with_a_word_lm_decodes_pieces_into_words(tmp_path):
    v = Vocabulary.from_bpe_model(_model())
    lp = _one_hot_path(v, "the small red fox")
    plain = BeamSearchDecoder(list(v.tokens), v.tokenizer, v.word_separator, beam_width=8)
    assert plain.decode([lp]) == ["the small red fox"]
    arpa = write_unigram_arpa(tmp_path / "lm.arpa", ["the", "small", "red", "fox", "box"], ("small", "red"))
    with_lm = BeamSearchDecoder(list(v.tokens), v.tokenizer, v.word_separator, lm_path=str(arpa), beam_width=8)
    assert with_lm.decode([lp]) == ["the small red fox"]
    text, words = with_lm.decode_with_word_frames([lp])[0]
    assert [w for w, _, _ in words] == ["the", "small", "red", "fox"]


def test_greedy_word_times_and_sherpa_tokens_for_pieces():
    v = Vocabulary.from_bpe_model(_model())
    lp = _one_hot_path(v, "the small fox")
    words = greedy_words(lp.argmax(1), v, 0.04)
    assert [w.word for w in words] == ["the", "small", "fox"]
    assert all(a.end <= b.start for a, b in zip(words, words[1:]))
    lines = tokens_txt(v).splitlines()
    assert len(lines) == len(v) and lines[1] == "<unk> 1" and any(line.startswith(WORD_START) for line in lines)


# ------------------------------------------------------------------------------------ a NeMo-style BPE teacher
# NeMo's convention: the pieces in the sentencepiece model's order, the blank last (test_first_hour's linear teacher)


@pytest.mark.slow
def test_a_nemo_style_bpe_teacher_distils_into_a_bpe_student_with_no_token_dropped(tmp_path, monkeypatch):
    model = _model()
    (tmp_path / "m.model").write_bytes(model)
    code, out, c = corpus(tmp_path, "--tokenizer", "bpe", "--bpe-model", str(tmp_path / "m.model"),
                          "--normalize", "lower", untranscribed=4)
    assert code == 0, out
    words = sorted({w for t in Corpus(c).split("train").transcripts for w in t.split()})
    arpa = write_unigram_arpa(tmp_path / "lm.arpa", words, ("the", "box"))
    pieces = list(Vocabulary.from_bpe_model(model).tokens[1:])
    (tmp_path / "nemo_teacher.py").write_text(LINEAR_TEACHER)
    monkeypatch.syspath_prepend(str(tmp_path))
    cache = tmp_path / "cache.zarr"
    cfg = write_yaml(tmp_path / "d.yaml", {"dump": {
        "teacher": {"entry_point": "nemo_teacher:load", "args": {"tokens": pieces + ["<blank>"], "blank": len(pieces)}},
        "corpus": str(c),
        "output": str(cache), "splits": ["train", "untranscribed", "dev"], "layers": [1], "batch_size": 8,
        "progress": False, "device": "cpu", "max_dropped_mass": 1.0,
        "lm_targets": {"lm": str(arpa), "splits": ["untranscribed"], "nbest": 2, "beam_width": 8}}})
    res = CliRunner().invoke(main, ["dump-teacher", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    meta = TeacherCache(str(cache)).meta
    vocab_alignment = meta.teacher["alignment"]["vocabulary"]
    assert vocab_alignment["kind"] == "permutation" and "dropped" not in vocab_alignment["counts"]
    assert vocab_alignment["unreached"] == []
    assert Vocabulary.from_dict(meta.vocab) == Corpus(c).vocab
    # the LM's pseudo-labels are pieces, and spell words of the LM
    tokens = zarr.open_group(str(cache), mode="r")["untranscribed/lm_nbest_tokens"][:]
    assert len(tokens) and tokens.min() >= 1 and tokens.max() < len(pieces) + 1
    assert set(Corpus(c).vocab.decode(tokens.tolist()).split()) <= set(words)
    run = tmp_path / "student"
    scfg = write_yaml(tmp_path / "s.yaml", {
        "data": {"corpus": str(c), "batch_size": 8, "num_buckets": 1},
        "model": {"input_dim": 16, "hidden_dim": 16, "num_layers": 2, "num_classes": len(pieces) + 1,
                  "dropout": 0.0, "subsampling": 2},
        "train": {"epochs": 1, "lr": 0.01, "output_dir": str(run), "progress": False, "seed": 0},
        "distill": {"cache": str(cache), "gamma": 0.0, "untranscribed_splits": ["untranscribed"],
                    "pseudo_labels": "lm"}})
    res = CliRunner().invoke(main, ["train-student", "--config", str(scfg)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(run / "checkpoint_last.pt"), "--corpus", str(c),
                                    "--split", "dev", "--decoder", "beam", "--lm", str(arpa), "--beam-width", "4"])
    assert res.exit_code == 0, res.output
    assert "WER" in res.output
