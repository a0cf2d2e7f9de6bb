"""A Hugging Face `Trainer` whose `compute_loss` adds offline-kd's cached-target terms (pip install -e '.[hf]').

    python examples/library/hf_trainer.py --corpus data/demo --cache cache/demo_teacher.zarr --steps 100
"""

import argparse

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from transformers import Trainer, TrainingArguments

from offline_kd import Corpus, CTCTerm, DistillationLoss, SpikeKL, TeacherCache, collate_frames


class Utterances(torch.utils.data.Dataset):
    """Your dataset: an utterance id with its features and labels (`compute_loss` joins the cache by id)."""
    def __init__(self, corpus_dir: str, split: str = "train"):
        self.corpus = Corpus(corpus_dir)
        self.reader = self.corpus.split(split)

    def __len__(self):
        return len(self.reader)

    def __getitem__(self, i):
        return {"id": self.reader.utterance_ids[i], "features": torch.from_numpy(self.reader.features(i)),
                "labels": torch.tensor(self.corpus.vocab.encode(self.reader.transcripts[i]))}


def collate(items: list) -> dict:     # your collator: the ids travel with the batch
    return {"ids": [it["id"] for it in items], "features": pad_sequence([it["features"] for it in items], True),
            "lengths": torch.tensor([len(it["features"]) for it in items]),
            "labels": torch.cat([it["labels"] for it in items]),
            "label_lengths": torch.tensor([len(it["labels"]) for it in items])}


class ConvStudent(nn.Module):
    """Your model: (B, T, D) features -> (T', B, V) log-probs, T' = ceil(T / s) (the cache's frames)."""
    def __init__(self, input_dim: int, num_classes: int, s: int, hidden: int = 128):
        super().__init__()
        self.s = s
        self.net = nn.Sequential(nn.Conv1d(input_dim, hidden, s, stride=s), nn.ReLU(), nn.Conv1d(hidden, hidden, 5,
                                 padding=2), nn.ReLU(), nn.Conv1d(hidden, num_classes, 1))

    def forward(self, features, lengths):
        x = nn.functional.pad(features, (0, 0, 0, (-features.shape[1]) % self.s)).transpose(1, 2)
        return self.net(x).log_softmax(1).permute(2, 0, 1), (lengths + self.s - 1) // self.s


class DistilTrainer(Trainer):
    def __init__(self, *args, cached, kd_loss: DistillationLoss, temperature: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.cached, self.kd_loss, self.temperature = cached, kd_loss, temperature

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        log_probs, lengths = model(inputs["features"], inputs["lengths"])
        teacher = collate_frames([self.cached.targets(u, num_frames=int(n)) for u, n in zip(inputs["ids"], lengths)],
                                 device=log_probs.device)
        loss, _ = self.kd_loss(log_probs, lengths, teacher, inputs["labels"], inputs["label_lengths"],
                               temperature=self.temperature)
        return (loss, {"log_probs": log_probs}) if return_outputs else loss


def trainer_for(corpus_dir: str, cache_path: str, output_dir: str, steps: int, batch_size: int = 16, lr: float = 3e-3):
    data, cache = Utterances(corpus_dir), TeacherCache(cache_path)
    model = ConvStudent(data.corpus.feature_dim, len(data.corpus.vocab), cache.meta.subsampling)
    args = TrainingArguments(output_dir, max_steps=steps, per_device_train_batch_size=batch_size, learning_rate=lr,
                             logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
                             remove_unused_columns=False)
    return DistilTrainer(model=model, args=args, train_dataset=data, data_collator=collate,
                         cached=cache.split("train"), kd_loss=DistillationLoss([SpikeKL(0.3), CTCTerm(1.0)]))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, default in (("--corpus", None), ("--cache", None), ("--out", "runs/hf_trainer"), ("--steps", "100")):
        p.add_argument(flag, required=default is None, default=default)
    a = p.parse_args()
    print(trainer_for(a.corpus, a.cache, a.out, int(a.steps)).train())
