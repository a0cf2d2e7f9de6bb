"""The teacher's targets: one utterance's (`TeacherFrames`, what `CacheSplit.targets(utt_id)` returns) and a
batch's, as the distillation loss consumes them (`TeacherTargets`), whatever their source (a cache read by
`DistillBatchDataset`, `collate_frames` of a user's own batch, or a live teacher)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch


def collapse_best_path(path: np.ndarray) -> np.ndarray:
    """Frame argmax path -> greedy 1-best token ids (repeats collapsed, blanks (0) removed). The one CTC collapse
    of the project: greedy decoding and the cached 1-best both use it."""
    path = np.asarray(path)
    if len(path) == 0:
        return path.astype(np.int64)
    keep = np.ones(len(path), dtype=bool)
    keep[1:] = path[1:] != path[:-1]
    return path[keep & (path != 0)].astype(np.int64)


@dataclass
class TeacherFrames:
    """One utterance's cached teacher outputs (numpy, float32 values): `log_probs` (T, V) at temperature 1, blank 0,
    `best_path` (T,) the frame argmax, `hidden` {teacher layer: (T, H)}. T = the input frames / `subsampling`
    (rounded as the student's model rounds). `confidence`: the mean posterior of its 1-best's tokens (None where the
    cache stores none); `nbest`: the LM N-best [(token ids, weight)] where the dump decoded one. `fields`: any
    further per-frame field of the cache (registered in offline_kd.cache.fields), by name."""
    utterance_id: str
    log_probs: np.ndarray
    best_path: np.ndarray
    hidden: dict
    subsampling: int = 1
    confidence: Optional[float] = None
    nbest: Optional[list] = None
    fields: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return len(self.best_path)

    @property
    def tokens(self) -> np.ndarray:
        """The teacher's greedy 1-best token ids (repeats collapsed, blanks removed)."""
        return collapse_best_path(self.best_path)


def collate_frames(frames: list, device=None) -> "TeacherTargets":
    """`TeacherFrames` of a batch -> `TeacherTargets`: log-probs padded time-major (T, B, V), `lengths` (B,), hidden
    {layer: (B, T, H)}, the 1-best tokens concatenated, N-best where every utterance has one, and every further
    per-frame field padded (B, T, ...) in `fields`. `TeacherTargets.mask()` is the (B, T) valid-frame mask."""
    if not frames:
        raise ValueError("collate_frames: no TeacherFrames to collate")
    pad = lambda xs: torch.nn.utils.rnn.pad_sequence([torch.from_numpy(np.asarray(x)) for x in xs],  # noqa: E731
                                                     batch_first=True)
    layers = sorted(set.intersection(*(set(f.hidden) for f in frames)))
    nbest = [f.nbest for f in frames]
    out = TeacherTargets.from_best_paths(
        pad([f.log_probs for f in frames]).transpose(0, 1),
        torch.tensor([f.num_frames for f in frames], dtype=torch.long),
        {L: pad([f.hidden[L] for f in frames]) for L in layers}, [f.best_path for f in frames],
        nbest=nbest if all(n is not None for n in nbest) else None,
        fields={k: pad([f.fields[k] for f in frames]) for k in frames[0].fields})
    return out.to(device) if device is not None else out


@dataclass
class TeacherTargets:
    log_probs: torch.Tensor             # (T', B, V) temperature-1 log-probs, time-major like the model's output
    lengths: torch.Tensor               # (B,) teacher frames per utterance
    hidden: dict[int, torch.Tensor]     # teacher layer -> (B, T', H)
    tokens: torch.Tensor                # the teacher's greedy 1-best of every utterance, concatenated
    token_lengths: torch.Tensor         # (B,)
    # per utterance, the cached LM N-best [(token ids, weight), ...] (untranscribed ones; None otherwise), or None
    nbest: list | None = None
    fields: dict = field(default_factory=dict)     # further per-frame fields {name: (B, T', ...)}

    def mask(self) -> torch.Tensor:
        """(B, T') bool, True on each utterance's valid frames."""
        dev = self.log_probs.device
        return torch.arange(self.log_probs.shape[0], device=dev)[None, :] < self.lengths.to(dev)[:, None]

    def pin_memory(self) -> "TeacherTargets":
        """Page-locked copies of the dense targets (the DataLoader calls this with pin_memory on CUDA)."""
        return TeacherTargets(self.log_probs.pin_memory(), self.lengths, {L: h.pin_memory() for L, h in self.hidden.items()},
                              self.tokens, self.token_lengths, self.nbest,
                              {k: v.pin_memory() for k, v in self.fields.items()})

    def to(self, device) -> "TeacherTargets":
        return TeacherTargets(self.log_probs.to(device), self.lengths, {L: h.to(device) for L, h in self.hidden.items()},
                              self.tokens.to(device), self.token_lengths.to(device), self.nbest,
                              {k: v.to(device) for k, v in self.fields.items()})

    def nbest_labels(self, labels: torch.Tensor, label_lengths: torch.Tensor, labelled: torch.Tensor | None,
                     top: int | None = None):
        """The CTC targets with the cached LM N-best for the untranscribed utterances: (labels, label_lengths,
        owner, weights), entry e being utterance owner[e]'s reference (weight 1) or one of its N hypotheses (its
        posterior weight). `top=1`: the LM 1-best alone at weight 1 (distill.pseudo_labels lm_1best). Without
        N-best: the `hard_labels` targets, owner and weights None."""
        if self.nbest is None or labelled is None or bool(labelled.all()):
            return (*self.hard_labels(labels, label_lengths, labelled), None, None)
        ref = torch.split(labels, label_lengths.tolist())
        best = torch.split(self.tokens, self.token_lengths.tolist())
        seqs, owner, weights = [], [], []
        for b, (r, keep) in enumerate(zip(ref, labelled.tolist())):
            hyps = [(r, 1.0)] if keep else (
                [(torch.from_numpy(t).to(labels.device), 1.0 if top == 1 else w) for t, w in self.nbest[b][:top]]
                or [(best[b].to(labels.device), 1.0)])
            for t, w in hyps:
                seqs.append(t)
                owner.append(b)
                weights.append(w)
        dev = label_lengths.device
        return (torch.cat(seqs), torch.tensor([len(t) for t in seqs], dtype=torch.long, device=dev),
                torch.tensor(owner, dtype=torch.long, device=dev),
                torch.tensor(weights, dtype=torch.float32, device=dev))

    def hard_labels(self, labels: torch.Tensor, label_lengths: torch.Tensor,
                    labelled: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The CTC targets of a batch: the reference labels of labelled utterances, the teacher's 1-best for the
        others (untranscribed audio: `labelled[b]` False). Concatenated like `labels`, with their lengths."""
        if labelled is None or bool(labelled.all()):
            return labels, label_lengths
        ref = torch.split(labels, label_lengths.tolist())
        best = torch.split(self.tokens, self.token_lengths.tolist())
        chosen = [r if keep else t.to(labels.device) for r, t, keep in zip(ref, best, labelled.tolist())]
        return (torch.cat(chosen) if chosen else labels,
                torch.tensor([len(c) for c in chosen], dtype=torch.long, device=label_lengths.device))

    @classmethod
    def from_best_paths(cls, log_probs: torch.Tensor, lengths: torch.Tensor, hidden: dict[int, torch.Tensor],
                        best_paths: list[np.ndarray], nbest: list | None = None,
                        fields: dict | None = None) -> "TeacherTargets":
        return cls(log_probs, lengths, hidden, *best_tokens(best_paths), nbest=nbest, fields=fields or {})


def best_tokens(best_paths: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame argmax paths -> the 1-best token ids of every utterance, concatenated, and their counts."""
    tokens = [torch.from_numpy(collapse_best_path(p)) for p in best_paths]
    return (torch.cat(tokens) if tokens else torch.zeros(0, dtype=torch.long),
            torch.tensor([len(t) for t in tokens], dtype=torch.long))


def host_tensor(x: np.ndarray) -> torch.Tensor:
    """A stored code array as a host tensor; unsigned types wider than a byte become int32 (torch's uint16 lacks
    the indexing ops decoding needs)."""
    x = np.ascontiguousarray(x)
    if x.dtype.kind == "u" and x.dtype.itemsize > 1:
        x = x.astype(np.int32)
    return torch.from_numpy(x)


@dataclass
class EncodedTargets:
    """A batch's cached targets still in their stored codes (`distill.decode_on: device`): the codes are what travels
    from the loader to the training device, and `decode` rebuilds the dense targets there with the cache's codecs
    (`offline_kd.cache.reader.TargetDecoder`)."""
    codes: dict[str, torch.Tensor]      # stored array path -> (sum of frames, ...) codes, utterances in batch order
    lengths: torch.Tensor               # (B,) teacher frames per utterance
    tokens: torch.Tensor                # the teacher's greedy 1-best of every utterance, concatenated
    token_lengths: torch.Tensor         # (B,)
    nbest: list | None = None           # as TeacherTargets.nbest

    def pin_memory(self) -> "EncodedTargets":
        return EncodedTargets({k: v.pin_memory() for k, v in self.codes.items()}, self.lengths, self.tokens,
                              self.token_lengths, self.nbest)

    def decode(self, decoder, device) -> TeacherTargets:
        codes = {k: v.to(device, non_blocking=True) for k, v in self.codes.items()}
        log_probs, hidden, fields = decoder.decode_torch(codes, device)
        sizes = self.lengths.tolist()
        pad = lambda x: torch.nn.utils.rnn.pad_sequence(torch.split(x, sizes), batch_first=True)  # noqa: E731
        return TeacherTargets(pad(log_probs).transpose(0, 1), self.lengths, {L: pad(h) for L, h in hidden.items()},
                              self.tokens.to(device), self.token_lengths.to(device), self.nbest,
                              {k: pad(v) for k, v in fields.items()})


def lm_confidence(nbest: list | None, batch: int) -> torch.Tensor:
    """(B,) the posterior of each utterance's LM 1-best among its stored N-best (1 where it has none: a transcribed
    utterance, or no N-best): the factor by which distill.confidence_weighting scales the teacher's confidence when
    the pseudo-labels are the LM's. On tts_en's untranscribed audio the product ranks the LM 1-best's true character
    accuracy better than the teacher's confidence alone (Spearman 0.58 against 0.42: docs/benchmarks.md, "Pseudo-label
    quality of the tts_en teacher")."""
    if nbest is None:
        return torch.ones(batch)
    return torch.tensor([h[0][1] if h else 1.0 for h in nbest], dtype=torch.float32)

