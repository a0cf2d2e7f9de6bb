"""docs/extending.md, "Adding a cache field", done here: a per-frame entropy of the teacher's posteriors, added by
one `register_field` call in this file and `dump.fields: [entropy]`, with no edit elsewhere, is written, sealed,
checksummed, verified, read by id, batched for training and consumed by a loss term of its own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from helpers import QUIET, dump_cfg, student_dict
from offline_kd import DistillationLoss, LossTerm, TeacherCache, collate_frames
from offline_kd.cache.fields import FrameField, register_field
from offline_kd.cache.verify import verify_cache
from offline_kd.commands import dump_teacher, train_student
from offline_kd.config import ExperimentConfig, build_dataclass
from offline_kd.data.distill_dataset import DistillBatchDataset
from offline_kd.data.corpus import Corpus
from offline_kd.errors import OfflineKDError


def entropy(log_probs: np.ndarray) -> np.ndarray:
    """(F, V) log-probs -> (F,) the entropy of each frame's posterior, in nats."""
    return -(np.exp(log_probs) * log_probs).sum(-1)


register_field(FrameField("entropy", entropy, "float16"))


class EntropyWeightedCTC(LossTerm):
    """A term of one's own reading the field: CTC scaled by the teacher's mean entropy over valid frames."""
    name = "entropy_ctc"

    def forward(self, i):
        from offline_kd.losses.kd import ctc_loss
        h = i.teacher_fields["entropy"].float()
        mask = torch.arange(h.shape[1])[None, :] < i.lengths[:, None]
        return ctc_loss(i.log_probs, i.labels, i.lengths, i.label_lengths) * (h * mask).sum() / mask.sum()


@pytest.fixture(scope="module")
def entropy_cache(tiny_teacher, tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("field") / "entropy.zarr"
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, out, splits=["train"], fields=["entropy"]), **QUIET)
    return out


def test_the_field_is_stored_sealed_and_read_by_id(entropy_cache):
    cache = TeacherCache(str(entropy_cache))
    assert cache.meta.codecs["fields"] == [{"name": "entropy", "dtype": "float16", "shape": []}]
    split = cache.split("train")
    for u in split.utterance_ids[:5]:
        f = split.targets(u)
        np.testing.assert_array_equal(f.fields["entropy"], entropy(f.log_probs).astype(np.float16))
    assert verify_cache(str(entropy_cache), log=lambda *_: None)["ok"]
    t = collate_frames([split.targets(u) for u in split.utterance_ids[:3]])
    assert t.fields["entropy"].shape == t.log_probs.shape[1::-1]


def test_a_changed_value_of_the_field_is_refused_on_read(entropy_cache, tmp_path):
    import shutil
    bad = tmp_path / "bad.zarr"
    shutil.copytree(entropy_cache, bad)
    a = zarr.open_array(str(bad / "train" / "entropy"), mode="r+")
    a[0] = a[0] + 1
    split = TeacherCache(str(bad)).split("train")
    with pytest.raises(OfflineKDError, match="checksum"):
        split.targets(split.utterance_ids[0])


def test_training_batches_carry_it_to_a_loss_term_of_ones_own(entropy_cache, tiny_corpus, tmp_path):
    corpus = Corpus(tiny_corpus)
    split = TeacherCache(str(entropy_cache)).split("train")
    batch = DistillBatchDataset(corpus.split("train"), corpus.vocab, split)[[0, 1, 2, 3]]
    t = batch["teacher"]
    assert t.fields["entropy"].shape == (4, t.log_probs.shape[0])
    lp = t.log_probs.clone().requires_grad_()
    total, terms = DistillationLoss([EntropyWeightedCTC(1.0)])(lp, t.lengths, t, batch["labels"], batch["label_lengths"])
    total.backward()
    assert set(terms) == {"entropy_ctc", "total"} and torch.isfinite(total) and lp.grad.abs().sum() > 0
    # and train-student takes the cache as any other
    cfg = build_dataclass(ExperimentConfig, student_dict(tiny_corpus, entropy_cache, tmp_path / "s", epochs=1))
    assert train_student.run(cfg, **QUIET)["best_dev_wer"] >= 0


def test_an_unregistered_field_is_a_one_line_error_before_anything_is_written(tiny_teacher, tiny_corpus, tmp_path):
    with pytest.raises(OfflineKDError, match="dump.fields: 'nope' is not a registered per-frame field"):
        dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, tmp_path / "x.zarr", fields=["nope"]), **QUIET)
    assert not (tmp_path / "x.zarr").exists()
