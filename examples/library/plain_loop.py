"""Distil a model of your own from an offline-kd teacher cache in a plain PyTorch loop, joined by utterance id.

    python examples/library/plain_loop.py --corpus data/demo --cache cache/demo_teacher.zarr --steps 200

Your model is any nn.Module giving (T', B, V) log-probs (blank 0) at the cache's frame rate; your data gives
utterance ids, features and label ids (here read from the offline-kd corpus the cache was dumped from).
"""

import argparse
import random

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence

from offline_kd import Corpus, CTCTerm, DistillationLoss, SpikeKL, TeacherCache, collate_frames


class MyStudent(nn.Module):
    """Not offline-kd's: s input frames stacked into one, a bidirectional GRU, a linear output."""

    def __init__(self, input_dim: int, num_classes: int, subsampling: int, hidden: int = 96):
        super().__init__()
        self.s = subsampling
        self.rnn = nn.GRU(input_dim * subsampling, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, num_classes)

    def forward(self, x, lengths):
        b, t, d = x.shape
        x = nn.functional.pad(x, (0, 0, 0, (-t) % self.s)).reshape(b, -1, d * self.s)
        out_len = (lengths + self.s - 1) // self.s
        y, _ = self.rnn(pack_padded_sequence(x, out_len, batch_first=True, enforce_sorted=False))
        y, _ = pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])
        return self.out(y).log_softmax(-1).transpose(0, 1), out_len


def my_batches(ids: list, batch_size: int, seed: int = 0) -> list:
    """Your own batching: here, shuffled ids."""
    ids = random.Random(seed).sample(list(ids), len(ids))
    return [ids[i:i + batch_size] for i in range(0, len(ids), batch_size)]


def distil(model, corpus_dir, cache_path, batches, loss_fn=None, lr=1e-3, weight_decay=0.0, clip=5.0,
           temperature=1.0, split="train", seed=0) -> list:
    """One optimizer step per batch of utterance ids; -> each step's loss."""
    corpus = Corpus(corpus_dir)
    reader, cached = corpus.split(split), TeacherCache(cache_path).split(split)
    where = {u: i for i, u in enumerate(reader.utterance_ids)}
    loss_fn = loss_fn or DistillationLoss([SpikeKL(weight=0.3), CTCTerm(weight=1.0)])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    torch.manual_seed(seed), model.train()
    losses = []
    for ids in batches:
        feats = [torch.from_numpy(reader.features(where[u])) for u in ids]
        labels = [torch.tensor(corpus.vocab.encode(reader.transcripts[where[u]])) for u in ids]
        log_probs, lengths = model(pad_sequence(feats, batch_first=True), torch.tensor([len(f) for f in feats]))
        teacher = collate_frames([cached.targets(u, num_frames=int(n)) for u, n in zip(ids, lengths)])
        loss, terms = loss_fn(log_probs, lengths, teacher, torch.cat(labels), torch.tensor([len(y) for y in labels]),
                              temperature=temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()), clip)
        opt.step()
        losses.append(float(terms["total"]))
    return losses


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", required=True)
    p.add_argument("--cache", required=True)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=16)
    a = p.parse_args()
    corpus, cache = Corpus(a.corpus), TeacherCache(a.cache)
    model = MyStudent(corpus.feature_dim, len(corpus.vocab), cache.meta.subsampling)
    batches = my_batches(cache.split("train").utterance_ids, a.batch_size)
    losses = distil(model, a.corpus, a.cache, (batches * (a.steps // max(len(batches), 1) + 1))[:a.steps])
    print(f"{len(losses)} steps: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
