"""CTC prefix beam search with an optional KenLM n-gram LM (shallow fusion), via pyctcdecode.

Score of a hypothesis y for acoustic log-probs X:
    log P_ctc(y | X) + alpha * ln P_lm(words(y)) + beta * |words(y)|
(pyctcdecode converts KenLM's log10 scores to natural log before weighting with alpha).
"""

from __future__ import annotations

import multiprocessing as mp
import os

import numpy as np

_BPE = "\u2581"  # "▁": pyctcdecode's word-start marker for BPE-style alphabets
_SPECIAL_UNIGRAMS = {"<s>", "</s>", "<unk>"}


def _is_arpa(path: str) -> bool:
    """True if `path` is a plain-text ARPA file (KenLM binaries start with a different magic)."""
    with open(path, "rb") as f:
        return f.read(64).lstrip().startswith(b"\\data\\")


_KENLM_MAGIC = b"mmap lm http://kheafield.com/code"


def check_lm_file(path: str) -> None:
    """Refuse, before KenLM prints anything, a file that is neither an ARPA text model nor a KenLM binary."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(_KENLM_MAGIC):
        return
    if head.lstrip().startswith(b"\\data\\"):
        try:
            with open(path, encoding="utf-8") as t:
                for _ in t:
                    pass
        except UnicodeDecodeError as exc:
            raise ValueError(f"language model {path}: an ARPA file must be UTF-8 text; byte {exc.start} of a "
                             f"line is not") from None
        return
    raise ValueError(f"language model {path}: neither an ARPA file (text starting with \\data\\) nor a KenLM "
                     f"binary (made by build_binary); build one with lmplz and build_binary (KenLM)")


def read_arpa_unigrams(path: str) -> list[str]:
    """Words of an ARPA file's \\1-grams section, without <s>, </s>, <unk>.

    Unlike pyctcdecode's own reader this accepts entries without a backoff weight
    (e.g. order-1 models or hand-written files) and space- as well as tab-separated fields.
    """
    words, inside = [], False
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("\\"):
                if inside:
                    break
                inside = line == "\\1-grams:"
            elif inside and line:
                parts = line.split()
                if len(parts) >= 2 and parts[1] not in _SPECIAL_UNIGRAMS:
                    words.append(parts[1])
    return words


class BeamSearchDecoder:
    """pyctcdecode beam search over a CTC vocabulary, optionally fused with a KenLM model.

    Args:
        tokens: the V vocabulary entries, index-aligned with the log-probs' last axis;
            tokens[0] is the CTC blank.
        tokenizer: "char" (one character per token, words separated by `word_separator`),
            "word" (every non-blank token is a whole word, e.g. "w0042") or "bpe" (sentencepiece pieces; one
            that starts a word begins with "▁", which is pyctcdecode's own BPE mode).
        word_separator: the char-vocabulary token between words (e.g. "|"); ignored for "word".
        lm_path: KenLM model, ARPA text or KenLM binary; None decodes without an LM.
        alpha: LM weight. beta: word insertion bonus (added per word; only used with an LM).
        beam_width: beams kept per frame.
        unigrams: the LM's word list; if None it is read from an ARPA file (for a binary LM, from the
            ARPA file of the same name next to it, e.g. lm.arpa for lm.bin), or for a word vocabulary
            with a binary LM taken from the vocabulary itself.
        num_processes: > 1 decodes a batch in a fork-context multiprocessing Pool.
    """

    def __init__(self, tokens: list[str], tokenizer: str, word_separator: str | None,
                 lm_path: str | None = None, alpha: float = 0.5, beta: float = 1.0,
                 beam_width: int = 32, unigrams: list[str] | None = None, num_processes: int = 1):
        from pyctcdecode import build_ctcdecoder

        if tokenizer not in ("char", "word", "bpe"):
            raise ValueError(f"tokenizer must be 'char', 'word' or 'bpe', got {tokenizer!r}")
        if len(tokens) < 2:
            raise ValueError(f"need the blank plus at least one token, got {len(tokens)} tokens")
        if lm_path is not None and not os.path.isfile(lm_path):
            raise ValueError(f"language model file not found: {lm_path}")
        if lm_path is not None:
            check_lm_file(lm_path)
        self.tokens = list(tokens)
        self.vocab_size = len(tokens)
        self.beam_width = int(beam_width)
        self.num_processes = max(1, int(num_processes))

        if tokenizer == "char":
            # "" is pyctcdecode's blank; " " its word boundary.
            labels = [""] + [" " if t == word_separator else t for t in tokens[1:]]
        elif tokenizer == "bpe":
            # pieces as they are: pyctcdecode's BPE mode starts a word at "▁" (and reads "<unk>" as its unknown)
            labels = [""] + list(tokens[1:])
        else:
            # "▁w0042" makes pyctcdecode's BPE mode start a new word at every token.
            labels = [""] + [_BPE + t for t in tokens[1:]]

        if lm_path is not None and unigrams is None:
            if _is_arpa(lm_path):
                unigrams = read_arpa_unigrams(lm_path)
            elif os.path.isfile(sidecar := os.path.splitext(lm_path)[0] + ".arpa") and _is_arpa(sidecar):
                unigrams = read_arpa_unigrams(sidecar)   # a KenLM binary next to the ARPA it was built from
            elif tokenizer == "word":
                unigrams = [t for t in tokens[1:] if t not in _SPECIAL_UNIGRAMS]
        try:
            self._decoder = build_ctcdecoder(
                labels, kenlm_model_path=lm_path, unigrams=unigrams,
                alpha=float(alpha), beta=float(beta))
        except OSError as exc:  # kenlm's loader reports a bad file as OSError
            raise ValueError(f"cannot load language model {lm_path}: {str(exc).splitlines()[0][:300]}") from None
        if len(self._decoder._idx2vocab) != self.vocab_size:  # pyctcdecode appends a blank if absent
            raise ValueError("pyctcdecode changed the vocabulary size; check the blank token")

    def set_weights(self, alpha: float, beta: float) -> None:
        """Change the LM weight and word bonus without reloading the LM (for alpha/beta search)."""
        self._decoder.reset_params(alpha=float(alpha), beta=float(beta))

    def _check(self, lp: np.ndarray, i: int) -> np.ndarray:
        lp = np.asarray(lp, dtype=np.float32)
        if lp.ndim != 2 or lp.shape[1] != self.vocab_size:
            raise ValueError(f"log_probs[{i}] has shape {lp.shape}; expected (T, V) with "
                             f"V = {self.vocab_size} (the vocabulary size)")
        return lp

    def decode(self, log_probs: list[np.ndarray]) -> list[str]:
        """Beam-search a batch.

        Args:
            log_probs: per utterance a (T_i, V) float32 array of CTC log-probabilities
                (log_softmax output). They are passed to pyctcdecode unchanged: its check
                "mean row sum == 1" is false for log-probs, so it applies log_softmax,
                which leaves normalised log-probs as they are (then clips at ln 1e-15).
        Returns:
            one hypothesis per utterance: words separated by single spaces ("" if empty).
        """
        arrays = [self._check(lp, i) for i, lp in enumerate(log_probs)]
        empty = [a.shape[0] == 0 for a in arrays]
        todo = [a for a, e in zip(arrays, empty) if not e]
        kw = dict(beam_width=self.beam_width)
        if self.num_processes > 1 and len(todo) > 1:
            # Fork (not spawn/forkserver): the children must inherit pyctcdecode's class-level
            # LM registry; the pool is created here, after the LM was loaded.
            with mp.get_context("fork").Pool(min(self.num_processes, len(todo))) as pool:
                texts = self._decoder.decode_batch(pool, todo, **kw)
        else:
            texts = self._decoder.decode_batch(None, todo, **kw)
        it = iter(texts)
        return ["" if e else " ".join(next(it).split()) for e in empty]

    def decode_with_word_frames(self, log_probs: list[np.ndarray]) -> list[tuple[str, list[tuple[str, int, int]]]]:
        """The best hypothesis of every utterance with its words' frames: (text, [(word, first frame, end frame)]),
        from pyctcdecode's beam (its word frames come from the CTC alignment the beam kept)."""
        arrays = [self._check(lp, i) for i, lp in enumerate(log_probs)]
        kw = dict(beam_width=self.beam_width)
        out = []
        for a in arrays:
            if not a.shape[0]:
                out.append(("", []))
                continue
            # prune_history as pyctcdecode's decode() (and so `decode` here) sets it: the same best hypothesis
            best = self._decoder.decode_beams(a, prune_history=True, **kw)[0]
            words = [(w, int(s), int(e)) for w, (s, e) in best[2] if w.strip()]
            out.append((" ".join(best[0].split()), words))
        return out

    def decode_nbest(self, log_probs: list[np.ndarray], n: int) -> list[list[tuple[str, float]]]:
        """The n best hypotheses of every utterance, best first, as (text, score): pyctcdecode's final beam score
        (acoustic + alpha * LM + beta * words, natural log). Fewer than n when the beam holds fewer; an empty
        utterance has one empty hypothesis."""
        arrays = [self._check(lp, i) for i, lp in enumerate(log_probs)]
        todo = [a for a in arrays if a.shape[0]]
        kw = dict(beam_width=self.beam_width)
        if self.num_processes > 1 and len(todo) > 1:
            with mp.get_context("fork").Pool(min(self.num_processes, len(todo))) as pool:
                beams = self._decoder.decode_beams_batch(pool, todo, **kw)
        else:
            beams = [self._decoder.decode_beams(a, **kw) for a in todo]
        it = iter(beams)
        out = []
        for a in arrays:
            if not a.shape[0]:
                out.append([("", 0.0)])
                continue
            out.append([(" ".join(b[0].split()), float(b[-1])) for b in next(it)[:n]])
        return out
