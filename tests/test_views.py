"""Augmented views (#17 item 2): reproducible per (utterance, view, seed), cached per view by dump-teacher, given to
the student with the targets of the same view, equal between the cache and a live teacher; speed perturbation for
CTC-only training."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from helpers import (QUIET, dump_cfg, experiment_dict, offline_and_online_steps, step_records, student_dict,
                     write_yaml)
from offline_kd.cache.reader import TeacherCache
from offline_kd.cli import main
from offline_kd.commands import dump_teacher, train, train_student
from offline_kd.config import DumpConfig, ExperimentConfig, build_dataclass
from offline_kd.data.corpus import Corpus
from offline_kd.data.views import (ViewBatchSampler, ViewReader, ViewSpec, apply_view, parse_views, split_of,
                                   stretch, view_name)
from offline_kd.errors import OfflineKDError
from offline_kd.models.checkpoint import model_from_checkpoint
from offline_kd.models.numerics import exact_numerics

VIEWS = [{"speed": 0.9}, {"speed": 1.0, "time_masks": 2, "time_mask_width": 4, "freq_masks": 1,
                          "freq_mask_width": 3}, {"speed": 1.1}]


# ------------------------------------------------------------------------------------------- the transforms
def test_stretch_frame_counts_and_interpolation():
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    assert stretch(x, 1.0) is x
    fast, slow = stretch(x, 1.25), stretch(x, 0.8)
    assert fast.shape == (8, 2) and slow.shape == (12, 2) and fast.dtype == np.float32
    # frame t is the input at time t * speed: linear in t for this linear input, the last frame held
    np.testing.assert_allclose(fast[:, 0], np.arange(8) * 1.25 * 2, rtol=1e-6)
    np.testing.assert_allclose(slow[:, 0], np.minimum(np.arange(12) * 0.8, 9) * 2, rtol=1e-6)
    assert ViewSpec(1.1).frames(100) == 91 and ViewSpec(0.9).frames(100) == 111 and ViewSpec(2.0).frames(1) == 1


def test_views_are_reproducible_per_utterance_view_and_seed():
    x = np.random.default_rng(0).normal(size=(50, 16)).astype(np.float32)
    spec = parse_views(VIEWS, "v")[1]
    a = apply_view(x, spec, 0, 1, "utt1")
    np.testing.assert_array_equal(a, apply_view(x, spec, 0, 1, "utt1"))
    assert (a == 0).any() and not (x == 0).any()
    for other in ((1, 1, "utt1"), (0, 2, "utt1"), (0, 1, "utt2")):     # seed, view and utterance each matter
        assert not np.array_equal(a, apply_view(x, spec, *other))
    np.testing.assert_array_equal(x, x.copy())                          # the input is not modified


def test_view_config_errors_name_the_key():
    for raw, msg in (([{"speed": 3}], r"v\[0\]\.speed"), ([{"sped": 1.0}], "unknown key"),
                     ([{"time_masks": -1}], r"v\[0\]\.time_masks"), ("fast", "list of views"),
                     ([[1.0]], "mapping")):
        with pytest.raises(OfflineKDError, match=msg):
            parse_views(raw, "v")
    assert parse_views([0.9, {"speed": 1.1}], "v") == (ViewSpec(0.9), ViewSpec(1.1))
    assert split_of(view_name("train", 2)) == ("train", 2) and split_of("a@b") == ("a@b", None)


def test_dump_view_settings_are_validated():
    base = {"splits": ["train", "dev"]}
    for extra, msg in (({"views": VIEWS}, "view_splits"), ({"view_splits": ["train"]}, "dump.views"),
                       ({"views": VIEWS, "view_splits": ["test"]}, "not in dump.splits")):
        with pytest.raises(OfflineKDError, match=msg):
            build_dataclass(DumpConfig, {**base, **extra})


def test_batches_carry_views_drawn_from_seed_epoch_and_batch():
    class Fixed:
        def __init__(self):
            self.epoch = None

        def set_epoch(self, e):
            self.epoch = e

        def __iter__(self):
            return iter([[0, 1], [2], [3, 4]] * 10)

        def __len__(self):
            return 30
    s = ViewBatchSampler(Fixed(), 3, seed=5)
    s.set_epoch(2)
    first = list(s)
    assert s.sampler.epoch == 2 and len(s) == 30 and first == list(s)
    assert {k for k, _ in first} == {0, 1, 2}
    s.set_epoch(3)
    assert [k for k, _ in list(s)] != [k for k, _ in first]
    # torchrun: rank r's batch b is the epoch's batch b * N + r, and gets that batch's view
    ranks = []
    for r in range(2):
        f = Fixed()
        f.rank, f.world_size = r, 2
        v = ViewBatchSampler(f, 3, seed=5)
        v.set_epoch(2)
        ranks.append([k for k, _ in v])
    assert [ranks[b % 2][b // 2] for b in range(30)] == [k for k, _ in first]


# ---------------------------------------------------------------------------------------------- the cache
@pytest.fixture(scope="module")
def view_cache(tiny_teacher, tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("views") / "views.zarr"
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, out, splits=["train", "untranscribed", "dev"],
                              views=VIEWS, view_splits=["train", "untranscribed"], view_seed=3), **QUIET)
    return out


def test_dump_caches_each_view_with_its_own_frames_and_the_teacher_on_that_view(view_cache, tiny_teacher,
                                                                                tiny_corpus):
    cache = TeacherCache(str(view_cache))
    assert cache.splits == ["train@0", "train@1", "train@2", "untranscribed@0", "untranscribed@1",
                            "untranscribed@2", "dev"]
    assert cache.meta.views == {"views": VIEWS, "splits": ["train", "untranscribed"], "seed": 3}
    reader = Corpus(tiny_corpus).split("train")
    teacher = model_from_checkpoint(tiny_teacher)[0]
    specs = parse_views(VIEWS, "v")
    frames = [cache.split(f"train@{k}").num_frames for k in range(3)]
    assert frames[0] > frames[1] > frames[2]                             # slower speech, more frames
    for k in range(3):
        split = cache.split(f"train@{k}")
        view = ViewReader(reader, specs[k], 3, k)
        for u in reader.utterance_ids[:3]:
            i, p = reader.index[u], split.position[u]
            assert split.input_frames[p] == view.lengths[i] == specs[k].frames(int(reader.lengths[i]))
            assert split.feature_hashes[p] == reader.feature_hashes[i]   # the corpus's own features, checked
            x = torch.from_numpy(view.features(i))[None]
            with torch.no_grad(), exact_numerics():
                lp, _, _ = teacher.forward_with_hidden_states(x, torch.tensor([x.shape[1]]), [1])
            np.testing.assert_allclose(split.read(p)["log_probs"], lp[:, 0].numpy(), atol=1e-5)


def test_cache_verify_and_info_handle_views(view_cache, tiny_teacher):
    r = CliRunner().invoke(main, ["cache", "verify", str(view_cache), "--teacher", str(tiny_teacher), "--sample",
                                  "4", "--json"])
    assert r.exit_code == 0, r.output
    v = json.loads(r.output)
    assert v["ok"] and v["fidelity"]["top1_agreement"] == 1.0 and v["fidelity"]["kl_T1_max"] < 1e-9
    r = CliRunner().invoke(main, ["cache", "info", str(view_cache)])
    assert r.exit_code == 0 and "train@2" in r.output and "views of train, untranscribed (split@k), seed 3" in r.output


# ------------------------------------------------------------------------------------------- the student
def _student(tiny_corpus, cache, out, epochs=2, **kw):
    d = student_dict(tiny_corpus, cache, out, epochs=epochs, untranscribed_splits=["untranscribed"], **kw)
    return build_dataclass(ExperimentConfig, d)


def test_offline_equals_online_with_views(view_cache, tiny_teacher, tiny_corpus, tmp_path):
    """Each batch's view reaches the student and, through the cache or live, the teacher: the same steps."""
    off = _student(tiny_corpus, view_cache, tmp_path / "off")
    on = _student(tiny_corpus, view_cache, tmp_path / "on", views=VIEWS, view_seed=3)
    a, b = offline_and_online_steps(off, on, tiny_teacher)
    assert len(a) == len(b) > 10
    for x, y in zip(a, b):
        for k in ("train/soft", "train/ctc", "train/feature", "train/total", "train/grad_norm"):
            if k in x:
                assert x[k] == pytest.approx(y[k], rel=1e-4, abs=1e-6), (x["step"], k)
    # and the views mattered: the same student without views trains on other numbers
    plain_cache = tmp_path / "plain.zarr"
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, plain_cache, splits=["train", "untranscribed"]), **QUIET)
    c = offline_and_online_steps(_student(tiny_corpus, plain_cache, tmp_path / "p1"),
                                 _student(tiny_corpus, plain_cache, tmp_path / "p2"), tiny_teacher)[0]
    assert [x["train/total"] for x in a] != [x["train/total"] for x in c]


def test_student_views_resume_and_errors(view_cache, tiny_teacher, tiny_corpus, tmp_path):
    cfg = _student(tiny_corpus, view_cache, tmp_path / "r")
    train_student.run(cfg, **QUIET)
    ckpt = torch.load(tmp_path / "r" / "checkpoint_last.pt", weights_only=False)
    assert ckpt["distillation"]["views"]["splits"] == ["train", "untranscribed"]
    for kw, msg in (({"views": [{"speed": 0.8}]}, "differ from the views the cache"),
                    ({"view_seed": 1, "views": VIEWS}, "differ from the views the cache")):
        with pytest.raises(OfflineKDError, match=msg):
            train_student.run(_student(tiny_corpus, view_cache, tmp_path / "x", **kw), **QUIET)
    masked = student_dict(tiny_corpus, view_cache, tmp_path / "m", untranscribed_splits=["untranscribed"])
    masked["augment"] = {"time_masks": 1}
    with pytest.raises(OfflineKDError, match="give the masks in the views"):
        train_student.run(build_dataclass(ExperimentConfig, masked), **QUIET)
    # a run does not resume with other views (live teacher: views from distill.views)
    live = dict(online_teacher=str(tiny_teacher), **QUIET)
    train_student.run(_student(tiny_corpus, view_cache, tmp_path / "o", views=VIEWS, view_seed=3), **live)
    with pytest.raises(OfflineKDError, match="other views"):
        train_student.run(_student(tiny_corpus, view_cache, tmp_path / "o", epochs=3, views=[1.0]), resume=True,
                          **live)


def test_views_asked_of_a_cache_without_views(f32_cache, tiny_corpus, tmp_path):
    cfg = build_dataclass(ExperimentConfig, student_dict(tiny_corpus, f32_cache, tmp_path / "s", views=[1.1]))
    with pytest.raises(OfflineKDError, match="has no views of 'train'"):
        train_student.run(cfg, **QUIET)


def test_cli_dump_with_views_one_line_error(tiny_teacher, tiny_corpus, tmp_path):
    cfg = write_yaml(tmp_path / "d.yaml", {"dump": {"teacher": str(tiny_teacher), "corpus": str(tiny_corpus),
                                                    "output": str(tmp_path / "c.zarr"), "views": [{"speed": 5}],
                                                    "view_splits": ["train"]}})
    r = CliRunner().invoke(main, ["dump-teacher", "--config", str(cfg)])
    assert r.exit_code != 0 and "dump.views[0].speed" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "c.zarr").exists()


# --------------------------------------------------------------------------------- CTC-only speed perturbation
def test_train_with_speed_perturbation(tiny_corpus, tmp_path):
    d = experiment_dict(tiny_corpus, tmp_path / "sp", hidden=16, epochs=2)
    d["augment"] = {"speed_perturb": [0.9, 1.0, 1.1]}
    out = train.run(build_dataclass(ExperimentConfig, d), **QUIET)
    assert np.isfinite(out["best_dev_wer"])
    plain = experiment_dict(tiny_corpus, tmp_path / "pl", hidden=16, epochs=2)
    train.run(build_dataclass(ExperimentConfig, plain), **QUIET)
    assert [r["train/ctc"] for r in step_records(tmp_path / "sp")] != \
        [r["train/ctc"] for r in step_records(tmp_path / "pl")]
    for bad, msg in (([], "at least one speed"), ([3.0], "speed_perturb"), (["x"], "list of speeds")):
        d["augment"] = {"speed_perturb": bad}
        with pytest.raises(OfflineKDError, match=msg):
            build_dataclass(ExperimentConfig, d)


def test_view_reader_byview_and_lengths_on_a_corpus(tiny_corpus):
    """The reader-level pieces on a real corpus split, without a teacher."""
    from offline_kd.data.dataset import SpeechDataset, collate
    from offline_kd.data.views import ByView, CollatedByView, corpus_reader, max_view_lengths, valid_in_views
    corpus = Corpus(tiny_corpus)
    base = corpus.split("train")
    specs = parse_views(VIEWS, "v")
    readers = [ViewReader(base, v, 3, k) for k, v in enumerate(specs)]
    for k, r in enumerate(readers):
        assert len(r) == len(base) and r.utterance_ids == base.utterance_ids and r.path == base.path
        assert r.lengths.tolist() == [specs[k].frames(int(n)) for n in base.lengths]
        x = r.features(5)
        np.testing.assert_array_equal(x, apply_view(base.features(5), specs[k], 3, k, base.utterance_ids[5]))
        assert len(x) == r.lengths[5] and r.all_feature_hashes() == base.all_feature_hashes()
    assert max_view_lengths(base.lengths, specs).tolist() == readers[0].lengths.tolist()   # speed 0.9: longest
    # a view's split name resolves to the corpus seen through that view; a plain name to the split itself
    meta = {"views": VIEWS, "splits": ["train"], "seed": 3}
    np.testing.assert_array_equal(corpus_reader(corpus, "train@2", meta).features(1), readers[2].features(1))
    assert corpus_reader(corpus, "dev", meta).path.name == "dev.h5"
    with pytest.raises(OfflineKDError, match="has 3 views"):
        corpus_reader(corpus, "train@3", meta)
    # datasets by view: (view, key) reaches dataset `view`
    items = [SpeechDataset(r, corpus.vocab) for r in readers]
    assert ByView(items)[(2, 4)]["features"].shape[0] == readers[2].lengths[4] and len(ByView(items)) == len(base)
    batch = CollatedByView(items, collate)[(1, [0, 3])]
    assert batch["feature_lengths"].tolist() == [readers[1].lengths[0], readers[1].lengths[3]]
    # validity in every view: a speed that leaves too few frames for a transcript drops the utterance
    idx = np.arange(len(base))
    assert valid_in_views(readers, idx, corpus.vocab, _model_cfg(), False, lambda *_: None).tolist() == idx.tolist()
    squeezed = [ViewReader(base, ViewSpec(2.0), 3, 0)]
    kept = valid_in_views(squeezed, idx, corpus.vocab, _model_cfg(subsampling=4), True, lambda *_: None)
    assert 0 < len(kept) < len(idx)
    # a changed corpus feature is caught by a verifying reader
    tampered = ViewReader(base, specs[0], 3, 0, verify=True)
    base.feature_hashes = list(base.feature_hashes)
    base.feature_hashes[0] = "0" * 64
    with pytest.raises(OfflineKDError, match="features changed"):
        tampered.features(0)


def _model_cfg(subsampling=1):
    from offline_kd.config import ModelConfig
    return build_dataclass(ModelConfig, {"input_dim": 16, "hidden_dim": 8, "num_layers": 1, "num_classes": 9,
                                         "subsampling": subsampling})


def test_view_masks_and_settings_in_detail(tiny_corpus):
    """What mutation testing asked for: mask widths and positions drawn as SpecAugment draws them (width 0..W,
    start in [0, size - width - 1]), masks of zeros, boundaries of the settings, name parsing, the corpus reader of a
    masked view, the verifying reader, validity as an intersection."""
    from offline_kd.data.views import corpus_reader, valid_in_views
    x = np.random.default_rng(1).normal(size=(40, 16)).astype(np.float32) + 10.0     # no zeros of its own
    for spec, axis, size, width in ((ViewSpec(freq_masks=1, freq_mask_width=3), 0, 16, 3),
                                    (ViewSpec(time_masks=1, time_mask_width=5), 1, 40, 5)):
        widths, starts, ends = set(), set(), set()
        for u in range(300):
            y = apply_view(x, spec, 0, 0, f"u{u}")
            masked = np.flatnonzero((y == 0).all(axis=axis))
            assert ((y == 0) | (y == x)).all()                       # zeros where masked, the input elsewhere
            if len(masked):
                assert (np.diff(masked) == 1).all()                  # one contiguous block
                starts.add(int(masked[0]))
                ends.add(int(masked[-1]) + 1)
            widths.add(len(masked))
        assert widths == set(range(width + 1))
        assert min(starts) == 0 and max(ends) == size - 1
    assert ViewSpec(1.1).frames(0) == 0
    assert parse_views([{"speed": 0.5}, {"speed": 2.0}, {"time_masks": 1}], "v") == (
        ViewSpec(0.5), ViewSpec(2.0), ViewSpec(1.0, time_masks=1))
    for bad in ([{"speed": True}], [{"time_masks": True}], [{"time_masks": 1.5}]):
        with pytest.raises(OfflineKDError):
            parse_views(bad, "v")
    assert split_of("a@b@2") == ("a@b", 2)
    corpus = Corpus(tiny_corpus)
    meta = {"views": VIEWS, "splits": ["train"], "seed": 3}
    base = corpus.split("train")
    np.testing.assert_array_equal(corpus_reader(corpus, "train@1", meta).features(2),
                                  apply_view(base.features(2), parse_views(VIEWS, "v")[1], 3, 1, base.utterance_ids[2]))
    assert not isinstance(corpus_reader(corpus, "train", meta), ViewReader)
    spec = parse_views(VIEWS, "v")[0]
    ViewReader(base, spec, 3, 0, verify=True).features(0)            # unchanged features read fine
    base.feature_hashes = ["0" * 64] * len(base)
    ViewReader(base, spec, 3, 0).features(0)                         # not verifying: not checked
    subset = np.arange(10)
    readers = [ViewReader(corpus.split("train"), v, 3, k) for k, v in enumerate(parse_views(VIEWS, "v"))]
    assert valid_in_views(readers, subset, corpus.vocab, _model_cfg(), False, lambda *_: None).tolist() == \
        subset.tolist()
