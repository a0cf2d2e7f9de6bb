"""Attach offline-kd's cached teacher frames to each cut of a lhotse CutSet, so they travel with the cut through a
lhotse sampler and dataset as features do (pip install -e '.[lhotse]').

    python examples/library/lhotse_cuts.py --corpus data/demo --cache cache/demo_teacher.zarr
"""

import argparse

import torch
from lhotse import CutSet, MonoCut, SupervisionSegment
from lhotse.dataset import SimpleCutSampler
from lhotse.dataset.collation import collate_custom_field

from offline_kd import Corpus, CTCTerm, DistillationLoss, SpikeKL, TeacherCache, TeacherTargets

FRAME_SHIFT = 0.01      # seconds per feature frame (the corpus's front end)


def cuts_from_corpus(corpus_dir: str, split: str = "train") -> CutSet:
    """Stands in for your CutSet: one cut per utterance, its features attached as the custom array `fbank`."""
    reader = Corpus(corpus_dir).split(split)
    cuts = []
    for i, u in enumerate(reader.utterance_ids):
        f = reader.features(i)
        cut = MonoCut(u, 0.0, len(f) * FRAME_SHIFT, 0, [SupervisionSegment(u, u, 0.0, len(f) * FRAME_SHIFT,
                                                                           text=reader.transcripts[i])])
        cuts.append(cut.attach_tensor("fbank", f, frame_shift=FRAME_SHIFT, temporal_dim=0))
    return CutSet.from_cuts(cuts)


def attach_teacher(cuts: CutSet, cache_path: str, split: str = "train") -> CutSet:
    """Each cut gains `teacher_log_probs` (T', V) from the cache, joined by cut id (lazily, as cuts are read)."""
    cached = TeacherCache(cache_path).split(split)
    shift = FRAME_SHIFT * cached.cache.meta.subsampling

    def attach(cut):
        frames = cached.targets(cut.id)
        return cut.attach_tensor("teacher_log_probs", frames.log_probs, frame_shift=shift, temporal_dim=0)
    return cuts.map(attach)


class DistillationDataset(torch.utils.data.Dataset):
    """lhotse style: a CutSet in, a batch out (features, labels and the teacher's frames, padded)."""

    def __init__(self, vocab):
        self.vocab = vocab

    def __getitem__(self, cuts: CutSet) -> dict:
        x, x_len = collate_custom_field(cuts, "fbank", pad_value=0.0)
        t, t_len = collate_custom_field(cuts, "teacher_log_probs", pad_value=0.0)
        labels = [torch.tensor(self.vocab.encode(c.supervisions[0].text)) for c in cuts]
        teacher = TeacherTargets(t.transpose(0, 1), t_len, {}, torch.zeros(0, dtype=torch.long), t_len * 0)
        return {"features": x, "lengths": x_len, "teacher": teacher, "labels": torch.cat(labels),
                "label_lengths": torch.tensor([len(y) for y in labels])}


def loader(corpus_dir: str, cache_path: str, max_cuts: int = 16):
    cuts = attach_teacher(cuts_from_corpus(corpus_dir), cache_path)
    return torch.utils.data.DataLoader(DistillationDataset(Corpus(corpus_dir).vocab), batch_size=None,
                                       sampler=SimpleCutSampler(cuts, max_cuts=max_cuts, shuffle=True))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", required=True)
    p.add_argument("--cache", required=True)
    a = p.parse_args()
    batch = next(iter(loader(a.corpus, a.cache)))
    loss_fn = DistillationLoss([SpikeKL(0.3), CTCTerm(1.0)])
    # the teacher's log-probs against themselves: the KL term is 0, the CTC term the teacher's own CTC loss
    print(loss_fn(batch["teacher"].log_probs, batch["teacher"].lengths, batch["teacher"], batch["labels"],
                  batch["label_lengths"]))
