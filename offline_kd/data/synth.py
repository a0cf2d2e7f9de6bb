"""A deterministic synthetic speech-like corpus: the built-in demo data.

Geometry follows the reference recipe by default: 512-dim features, 1,228 word units + blank. How it is made:

* Each word unit is spelled with 3 "phones" from a shared inventory (default 48), so units share parts and the
  model must learn phones *and* their order (a frame classifier alone cannot do it).
* Sentences come from a sparse random bigram language model over Zipf-distributed units (each unit has a few
  likely successors), so a word LM helps beam search, as it does on speech.
* Each phone lasts max(2, round(U{1..4} x the speaker's rate)) frames; neighbouring phones blur into each other
  (coarticulation); short pauses appear between some words.
* Each speaker has its own linear distortion, offset and rate; each utterance its own noise level (SNR drawn
  from a range), so the task is learnable but not trivial, and a small model is clearly worse than a large one.

Everything is drawn from `numpy.random.default_rng(seed)`: the same arguments give byte-identical files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from offline_kd.data.corpus import SplitWriter, write_corpus_meta
from offline_kd.data.vocab import BLANK, Vocabulary


@dataclass(frozen=True)
class SynthSpec:
    seed: int = 0
    num_train: int = 2000
    num_dev: int = 200
    num_test: int = 200
    num_untranscribed: int = 0        # training-speaker audio without transcripts (split "untranscribed")
    num_lm_sentences: int = 0         # extra text-only sentences for lm_train.txt (besides the train transcripts)
    untranscribed_speakers: int = 0   # > 0: the untranscribed audio comes from this many further speakers, heard
                                      # nowhere else (0: from the training speakers)
    num_teacher_train: int = 0        # transcribed audio for the teacher only (split "teacher_train"): the labelled
                                      # data a pretrained teacher saw and its student has not
    teacher_speakers: int = 0         # speakers of "teacher_train", heard nowhere else (needed when it is > 0)
    feature_dim: int = 512
    num_units: int = 1228
    num_phones: int = 48
    phones_per_unit: int = 3
    num_speakers: int = 40
    test_speakers: int = 8            # held-out speakers used only in dev/test
    min_words: int = 4
    max_words: int = 12
    zipf: float = 1.1
    snr_db: tuple = (4.0, 20.0)
    speaker_distortion: float = 0.35
    latent_dim: int = 0               # > 0: phones, pauses and speakers live in a latent space of this size, projected
                                      # onto the features (phones crowd together: classes overlap under noise)
    allophones: int = 1               # > 1: each phone has this many variants; which one is spoken depends on the
                                      # phone before it (context-dependent acoustics, as on speech)
    allophone_spread: float = 0.6     # how far a variant lies from its phone's centre (0: identical, 1: unrelated)


def _unit_spellings(rng, spec: SynthSpec) -> np.ndarray:
    seen, out = set(), []
    while len(out) < spec.num_units:
        s = tuple(int(p) for p in rng.integers(0, spec.num_phones, spec.phones_per_unit))
        if s not in seen:
            seen.add(s)
            out.append(s)
    return np.asarray(out)


class SynthCorpus:
    def __init__(self, spec: SynthSpec):
        self.spec = spec
        rng = np.random.default_rng([spec.seed, 1])
        d = spec.feature_dim
        self.phones = rng.normal(0.0, 1.0, (spec.num_phones, d)).astype(np.float32)
        self.pause = rng.normal(0.0, 0.3, d).astype(np.float32)
        self.spellings = _unit_spellings(rng, spec)
        ranks = rng.permutation(spec.num_units)
        weights = 1.0 / (1.0 + ranks) ** spec.zipf
        self.unigram = weights / weights.sum()
        # sparse bigram: each unit prefers 8 successors (70% of its mass), the rest follows the unigram
        self.successors = np.stack([rng.choice(spec.num_units, 8, replace=False, p=self.unigram)
                                    for _ in range(spec.num_units)])
        n_spk = spec.num_speakers
        self.spk_mix = [np.eye(d, dtype=np.float32) + spec.speaker_distortion / np.sqrt(d)
                        * rng.normal(size=(d, d)).astype(np.float32) for _ in range(n_spk)]
        self.spk_bias = rng.normal(0.0, 0.3, (n_spk, d)).astype(np.float32)
        self.spk_rate = rng.uniform(0.75, 1.35, n_spk)
        self.proj = None
        if spec.latent_dim or spec.allophones > 1:   # their own random stream: the defaults keep their bytes
            self._latent(np.random.default_rng([spec.seed, 3]))
        if spec.untranscribed_speakers:   # their own random stream: the other speakers stay as they were
            extra = np.random.default_rng([spec.seed, 2])
            self.spk_mix += [np.eye(d, dtype=np.float32) + spec.speaker_distortion / np.sqrt(d)
                             * extra.normal(size=(d, d)).astype(np.float32) for _ in range(spec.untranscribed_speakers)]
            self.spk_bias = np.concatenate([self.spk_bias, extra.normal(0.0, 0.3, (spec.untranscribed_speakers, d))
                                           .astype(np.float32)])
            self.spk_rate = np.concatenate([self.spk_rate, extra.uniform(0.75, 1.35, spec.untranscribed_speakers)])
        if spec.teacher_speakers:         # their own random stream too
            extra = np.random.default_rng([spec.seed, 4])
            self.spk_mix += [np.eye(d, dtype=np.float32) + spec.speaker_distortion / np.sqrt(d)
                             * extra.normal(size=(d, d)).astype(np.float32) for _ in range(spec.teacher_speakers)]
            self.spk_bias = np.concatenate([self.spk_bias, extra.normal(0.0, 0.3, (spec.teacher_speakers, d))
                                           .astype(np.float32)])
            self.spk_rate = np.concatenate([self.spk_rate, extra.uniform(0.75, 1.35, spec.teacher_speakers)])
            if self.proj is not None:
                k = self.proj.shape[0]
                self.latent_mix += [np.eye(k, dtype=np.float32) + spec.speaker_distortion / np.sqrt(k)
                                    * extra.normal(size=(k, k)).astype(np.float32)
                                    for _ in range(spec.teacher_speakers)]
                self.latent_bias = np.concatenate([self.latent_bias, extra.normal(0.0, 0.3, (spec.teacher_speakers, k))
                                                  .astype(np.float32)])

    def _latent(self, rng) -> None:
        spec, d = self.spec, self.spec.feature_dim
        k = spec.latent_dim or d
        if not 0 < k <= d:
            raise ValueError(f"latent_dim must be in 1..feature_dim ({d}), got {spec.latent_dim}")
        if spec.allophones < 1:
            raise ValueError(f"allophones must be >= 1, got {spec.allophones}")
        centers = rng.normal(0.0, 1.0, (spec.num_phones, 1, k))
        spread = spec.allophone_spread if spec.allophones > 1 else 0.0
        if not 0.0 <= spread <= 1.0:
            raise ValueError(f"allophone_spread must be in [0, 1], got {spread}")
        self.variants = (np.sqrt(1 - spread ** 2) * centers
                         + spread * rng.normal(0.0, 1.0, (spec.num_phones, spec.allophones, k))).astype(np.float32)
        # variant of phone p after phone q (q = num_phones: after a pause)
        self.context = rng.integers(0, spec.allophones, (spec.num_phones, spec.num_phones + 1))
        self.pause = rng.normal(0.0, 0.3, k).astype(np.float32)
        n_spk = spec.num_speakers + spec.untranscribed_speakers
        self.latent_mix = [np.eye(k, dtype=np.float32) + spec.speaker_distortion / np.sqrt(k)
                           * rng.normal(size=(k, k)).astype(np.float32) for _ in range(n_spk)]
        self.latent_bias = rng.normal(0.0, 0.3, (n_spk, k)).astype(np.float32)
        # orthonormal rows: the projection keeps each frame's energy
        q, _ = np.linalg.qr(rng.normal(size=(d, k)))
        self.proj = q.T.astype(np.float32)

    def sentence(self, rng) -> list[int]:
        n = int(rng.integers(self.spec.min_words, self.spec.max_words + 1))
        words = [int(rng.choice(self.spec.num_units, p=self.unigram))]
        while len(words) < n:
            if rng.random() < 0.7:
                words.append(int(rng.choice(self.successors[words[-1]])))
            else:
                words.append(int(rng.choice(self.spec.num_units, p=self.unigram)))
        return words

    def render(self, rng, words: list[int], speaker: int) -> np.ndarray:
        """Word ids -> (T, D) float32 features."""
        latent = self.proj is not None
        segs = [self.pause] * int(rng.integers(1, 4))
        prev = self.spec.num_phones                      # context of the first phone: a pause
        for j, w in enumerate(words):
            # a repeated word is always separated by a pause (CTC needs a blank between repeats)
            if j and (words[j - 1] == w or rng.random() < 0.3):
                segs.extend([self.pause] * int(rng.integers(2, 4)))
                prev = self.spec.num_phones
            for p in self.spellings[w]:
                # at least 2 frames per phone: every phone survives 2x subsampling, so CTC can always align
                dur = max(2, int(round(rng.integers(1, 5) * self.spk_rate[speaker])))
                segs.extend([self.variants[p, self.context[p, prev]] if latent else self.phones[p]] * dur)
                prev = p
        segs.extend([self.pause] * int(rng.integers(1, 4)))
        x = np.stack(segs)
        # coarticulation: a short moving average blurs phone boundaries
        k = np.array([0.25, 0.5, 0.25], dtype=np.float32)
        x = k[0] * np.roll(x, 1, 0) + k[1] * x + k[2] * np.roll(x, -1, 0)
        if latent:
            x = (x @ self.latent_mix[speaker] + self.latent_bias[speaker]) @ self.proj
        else:
            x = x @ self.spk_mix[speaker] + self.spk_bias[speaker]
        snr_db = rng.uniform(*self.spec.snr_db)
        noise_std = np.sqrt(np.mean(x ** 2) / (10 ** (snr_db / 10)))
        x = x + rng.normal(0.0, noise_std, x.shape)
        return x.astype(np.float32)

    def vocab(self) -> Vocabulary:
        return Vocabulary((BLANK,) + tuple(f"w{i:04d}" for i in range(self.spec.num_units)), "word", None)


def write_synth_corpus(out: str | Path, spec: SynthSpec, log=print) -> dict:
    """Write train/dev/test HDF5 splits (and `untranscribed` when `spec.num_untranscribed` > 0: audio of the
    training speakers whose transcripts are not stored; `teacher_train` when `spec.num_teacher_train` > 0:
    transcribed audio of further speakers, for the teacher only) + vocab + corpus.json (+ lm_train.txt: the training
    transcripts and `spec.num_lm_sentences` more sentences of text drawn from the same language model). Each split has its own random stream, so adding untranscribed or teacher-only audio leaves the others as they were."""
    out = Path(out)
    corpus = SynthCorpus(spec)
    vocab = corpus.vocab()
    write_corpus_meta(out, vocab, spec.feature_dim, source="offline-kd data synth",
                      synth={k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.__dict__.items()})
    train_speakers = spec.num_speakers - spec.test_speakers
    counts = {}
    splits = (("train", spec.num_train), ("dev", spec.num_dev), ("test", spec.num_test),
              ("untranscribed", spec.num_untranscribed), ("teacher_train", spec.num_teacher_train))
    if spec.num_teacher_train and not spec.teacher_speakers:
        raise ValueError("num_teacher_train > 0 needs teacher_speakers > 0 (the teacher's own speakers)")
    for split_no, (split, n) in enumerate(splits):
        if split in ("untranscribed", "teacher_train") and n == 0:
            continue
        rng = np.random.default_rng([spec.seed, 100 + split_no])
        transcribed = split != "untranscribed"
        writer = SplitWriter(out / f"{split}.h5", spec.feature_dim, transcribed=transcribed)
        texts = []
        try:
            for i in range(n):
                if split == "teacher_train":
                    spk = spec.num_speakers + spec.untranscribed_speakers + int(rng.integers(0, spec.teacher_speakers))
                elif split == "untranscribed" and spec.untranscribed_speakers:
                    spk = spec.num_speakers + int(rng.integers(0, spec.untranscribed_speakers))
                elif split in ("train", "untranscribed") or spec.test_speakers == 0:
                    spk = int(rng.integers(0, max(1, train_speakers)))
                else:   # half of dev/test from held-out speakers
                    spk = int(rng.integers(0, spec.num_speakers)) if rng.random() < 0.5 else \
                        int(rng.integers(train_speakers, spec.num_speakers))
                words = corpus.sentence(rng)
                text = " ".join(vocab.tokens[w + 1] for w in words)
                writer.add(f"{split}-{i:06d}-spk{spk:03d}", corpus.render(rng, words, spk), text if transcribed else "")
                texts.append(text)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        if split == "train":
            rng_lm = np.random.default_rng([spec.seed, 200])
            texts += [" ".join(vocab.tokens[w + 1] for w in corpus.sentence(rng_lm))
                      for _ in range(spec.num_lm_sentences)]
            (out / "lm_train.txt").write_text("\n".join(texts) + "\n")
        counts[split] = n
        log(f"wrote {out / (split + '.h5')}: {n} utterances")
    return counts
