"""The front door (docs/library.md): targets by utterance id, the loss terms without a config, and the three
examples of examples/library run as a user would (a plain loop, a Hugging Face Trainer, a lhotse CutSet)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import QUIET, step_records, student_dict
from offline_kd import (Corpus, CTCTerm, DistillationLoss, SoftKL, SpikeKL, TeacherCache, TrainResult, collate_frames,
                        student_run, train_student)
from offline_kd.config import ExperimentConfig, build_dataclass
from offline_kd.errors import OfflineKDError
from offline_kd.losses.terms import hybrid_loss

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "library"


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_targets_by_id_are_the_dump_order_reads_and_collate_pads_them(f32_cache):
    split = TeacherCache(str(f32_cache)).split("train")
    u, v = split.utterance_ids[3], split.utterance_ids[0]
    a, b = split.targets(u), split.targets(v, layers=[1])
    want = split.read(3)
    np.testing.assert_array_equal(a.log_probs, want["log_probs"])
    np.testing.assert_array_equal(a.best_path, want["best_path"])
    assert set(a.hidden) == set(split.cache.layers) and set(b.hidden) == {1}
    assert a.utterance_id == u and a.subsampling == split.cache.meta.subsampling and a.num_frames == len(want["best_path"])
    assert a.confidence == pytest.approx(float(split.confidence[3]))
    t = collate_frames([a, b])
    assert t.log_probs.shape == (max(a.num_frames, b.num_frames), 2, a.log_probs.shape[1])
    assert t.lengths.tolist() == [a.num_frames, b.num_frames] and set(t.hidden) == {1}
    assert t.mask().sum().item() == a.num_frames + b.num_frames
    np.testing.assert_array_equal(t.log_probs[:b.num_frames, 1].numpy(), b.log_probs)
    assert t.tokens.tolist() == a.tokens.tolist() + b.tokens.tolist()


def test_a_missing_id_or_a_frame_count_mismatch_is_a_one_line_error_naming_the_id(f32_cache):
    split = TeacherCache(str(f32_cache)).split("train")
    with pytest.raises(OfflineKDError, match="utterance 'nope' is not in split 'train'"):
        split.targets("nope")
    u = split.utterance_ids[0]
    n = split.targets(u).num_frames
    with pytest.raises(OfflineKDError, match=f"utterance '{u}': the cache holds {n} teacher frames, the student gives "
                                             f"{n + 1}"):
        split.targets(u, num_frames=n + 1)


def test_the_loss_built_from_terms_equals_the_hybrid_loss_in_value_and_gradient():
    torch.manual_seed(0)
    s = torch.randn(12, 3, 6).log_softmax(-1).requires_grad_()
    t = torch.randn(12, 3, 6).log_softmax(-1)
    lengths, labels, ll = torch.tensor([12, 9, 7]), torch.tensor([1, 2, 3, 4, 5, 1]), torch.tensor([2, 3, 1])
    from offline_kd.data.targets import TeacherTargets
    teacher = TeacherTargets.from_best_paths(t, lengths, {}, [t[:n, b].argmax(-1).numpy() for b, n in enumerate([12, 9, 7])])
    total, terms = DistillationLoss([SpikeKL(0.3, context=2), CTCTerm(1.0)])(s, lengths, teacher, labels, ll,
                                                                             temperature=2.0)
    (g1,) = torch.autograd.grad(total, s)
    want, want_terms = hybrid_loss(s, lengths, labels, ll, t, 2.0, 0.3, 1.0, 0.0, kl_frames="spikes")
    (g2,) = torch.autograd.grad(want, s)
    assert torch.equal(total, want) and torch.equal(g1, g2) and set(terms) == set(want_terms) == {"soft", "ctc", "total"}
    _, only_ctc = DistillationLoss([SoftKL(0.0), CTCTerm(1.0)])(s, lengths, teacher, labels, ll)
    assert set(only_ctc) == {"ctc", "total"}          # a term of weight 0 is not computed


def test_example_a_distils_a_model_of_ones_own_in_a_plain_loop(f32_cache, tiny_corpus):
    ex = _example("plain_loop")
    corpus, cache = Corpus(tiny_corpus), TeacherCache(str(f32_cache))
    torch.manual_seed(0)
    model = ex.MyStudent(corpus.feature_dim, len(corpus.vocab), cache.meta.subsampling, hidden=32)
    batches = ex.my_batches(cache.split("train").utterance_ids, 8)
    losses = ex.distil(model, str(tiny_corpus), str(f32_cache), batches * 3, lr=3e-3)
    assert all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-6:]) < 0.8 * np.mean(losses[:6])


def test_example_a_with_the_bilstm_reproduces_train_student_step_for_step(f32_cache, tiny_corpus, tmp_path):
    """Same seed, same batches (the sampler's, by id), same terms: the plain loop's first 20 losses are
    train-student's, bit for bit."""
    ex = _example("plain_loop")
    d = student_dict(tiny_corpus, f32_cache, tmp_path / "run", epochs=2, alpha=0.3, beta=1.0, gamma=0.0,
                     seq_weight=0.0, kl_frames="spikes", spike_context=2, temperature_schedule=[[1, 1.0]])
    d["train"].update(scheduler="constant", warmup_steps=0)
    cfg = build_dataclass(ExperimentConfig, d)
    run = student_run(cfg, device="cpu", **QUIET)
    batches = (run.batch_ids(1) + run.batch_ids(2))[:20]
    assert len(batches) == 20
    mine = ex.distil(run.model, str(tiny_corpus), str(f32_cache), batches, loss_fn=DistillationLoss(
        [SpikeKL(0.3, context=2), CTCTerm(1.0)]), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
        clip=cfg.train.grad_clip, temperature=1.0, seed=cfg.train.seed)
    result = train_student(cfg, **QUIET)
    assert isinstance(result, TrainResult) and Path(result.best_checkpoint).is_file()
    theirs = [r["train/total"] for r in step_records(tmp_path / "run")][:20]
    assert mine == theirs


def test_example_b_a_hugging_face_trainer_adds_the_cached_terms(f32_cache, tiny_corpus, tmp_path):
    pytest.importorskip("transformers", reason="the hf extra is not installed (pip install -e '.[hf]')")
    pytest.importorskip("accelerate", reason="the hf extra is not installed (pip install -e '.[hf]')")
    ex = _example("hf_trainer")
    trainer = ex.trainer_for(str(tiny_corpus), str(f32_cache), str(tmp_path / "hf"), steps=24, batch_size=8)
    out = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 24 and all(math.isfinite(x) for x in losses) and math.isfinite(out.training_loss)
    assert np.mean(losses[-6:]) < np.mean(losses[:6])


def test_example_c_a_lhotse_cutset_carries_the_teachers_frames(f32_cache, tiny_corpus):
    pytest.importorskip("lhotse", reason="the lhotse extra is not installed (pip install -e '.[lhotse]')")
    ex = _example("lhotse_cuts")
    split = TeacherCache(str(f32_cache)).split("train")
    cuts = ex.attach_teacher(ex.cuts_from_corpus(str(tiny_corpus)), str(f32_cache))
    first = next(iter(cuts))
    np.testing.assert_array_equal(first.load_custom("teacher_log_probs"), split.targets(first.id).log_probs)
    batch = next(iter(ex.loader(str(tiny_corpus), str(f32_cache), max_cuts=8)))
    t = batch["teacher"]
    assert t.log_probs.shape[1] == len(batch["lengths"]) == 8
    total, terms = DistillationLoss([SpikeKL(0.3), CTCTerm(1.0)])(t.log_probs, t.lengths, t, batch["labels"],
                                                                  batch["label_lengths"])
    assert float(terms["soft"]) == pytest.approx(0.0, abs=1e-6) and math.isfinite(float(total))
