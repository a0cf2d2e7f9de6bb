"""Codebook targets (#30): the codebook codec (product quantisation fitted at dump time, uint8 indexes, sealed
codebooks) and the codebook loss (MVQ-KD: heads predict each codebook's index, cross-entropy summed over the
codebooks), from the cache and from the live teacher alike."""

import json
import time

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from helpers import QUIET, dump_cfg, offline_and_online_steps, student_dict
from offline_kd.cache.codecs import codec_from_spec
from offline_kd.cache.reader import TeacherCache
from offline_kd.cli import main
from offline_kd.commands import dump_teacher, train_student
from offline_kd.config import ExperimentConfig, build_dataclass
from offline_kd.errors import OfflineKDError
from offline_kd.losses.kd import codebook_loss

BOOK = {"name": "codebook", "num_codebooks": 4, "entries": 16}


@pytest.fixture(scope="module")
def cb_cache(tiny_teacher, tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("cb") / "cb.zarr"
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, out, codecs={"hidden": BOOK, "lowrank_fit_frames": 400}),
                     **QUIET)
    return out


def test_codebook_cache_stores_uint8_indexes_and_sealed_codebooks(cb_cache):
    root = zarr.open_group(str(cb_cache), mode="r")
    codes = root["train/hidden_1/codes"]
    assert codes.dtype == np.uint8 and codes.shape[1] == 4
    cache = TeacherCache(str(cb_cache))
    q = cache.hidden_codecs[1]
    assert q.name == "codebook" and q.codebooks.shape == (4, 16, -(-q.dim // 4))
    assert 0 < q.relative_error < 1
    # every entry of every codebook is used on the fit sample (empty clusters are re-seeded)
    fit = np.asarray(codes[:400])
    assert all(len(np.unique(fit[:, n])) == 16 for n in range(4))
    # the reconstruction re-encodes to the stored indexes (how the loss reads them from decoded targets)
    split = cache.split("train")
    raw = split.read_range(0, 4, layers={1, 3})
    stored = np.asarray(codes[: sum(len(r["log_probs"]) for r in raw)])
    rec = np.concatenate([r["hidden"][1] for r in raw])
    again = q.codes_torch(torch.from_numpy(rec), q.device_state("cpu")).numpy()
    np.testing.assert_array_equal(again, stored)
    # cache info prints the relative reconstruction error
    out = CliRunner().invoke(main, ["cache", "info", str(cb_cache)])
    assert out.exit_code == 0 and "codebook reconstruction error" in out.output
    info = json.loads(CliRunner().invoke(main, ["cache", "info", str(cb_cache), "--json"]).output)
    assert set(info["codebook_relative_error"]) == {"1", "3"}


def test_a_changed_codebook_is_caught_by_the_seal(cb_cache, tmp_path):
    import shutil
    copy = tmp_path / "copy.zarr"
    shutil.copytree(cb_cache, copy)
    books = zarr.open_group(str(copy), mode="r+")["codebook/hidden_3/codebooks"]
    books[0, 0, 0] = float(books[0, 0, 0]) + 0.5
    with pytest.raises(OfflineKDError, match="changed after its dump"):
        TeacherCache(str(copy))


def test_codebook_loss_is_cross_entropy_summed_over_codebooks_on_valid_frames():
    torch.manual_seed(0)
    logits = {1: torch.randn(2, 5, 3 * 4)}
    codes = {7: torch.randint(0, 4, (2, 5, 3))}
    lengths = torch.tensor([5, 2])
    want = []
    for b, n_valid in enumerate(lengths.tolist()):
        for f in range(n_valid):
            want.append(sum(float(-torch.log_softmax(logits[1][b, f, 4 * n:4 * n + 4], -1)[codes[7][b, f, n]])
                            for n in range(3)))
    got = codebook_loss(logits, codes, {1: 7}, lengths)
    assert abs(float(got) - np.mean(want)) < 1e-5


def test_codebook_loss_trains_from_the_cache_as_from_the_live_teacher(cb_cache, tiny_teacher, tiny_corpus,
                                                                       tmp_path):
    """--online-teacher quantises the live states with the cache's codebooks: the same loss, step for step."""
    kw = dict(feature_loss="codebook", gamma=0.5)
    off = build_dataclass(ExperimentConfig, student_dict(tiny_corpus, cb_cache, tmp_path / "off", **kw))
    on = build_dataclass(ExperimentConfig, student_dict(tiny_corpus, cb_cache, tmp_path / "on", **kw))
    a, b = offline_and_online_steps(off, on, tiny_teacher)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert abs(x["train/feature"] - y["train/feature"]) < 1e-4 * max(1.0, abs(x["train/feature"]))
        assert abs(x["train/total"] - y["train/total"]) < 1e-4 * max(1.0, abs(x["train/total"]))
    # the heads predict num_codebooks x entries logits per mapped layer, are saved for resume, not exported
    ckpt = torch.load(tmp_path / "off" / "checkpoint_last.pt", weights_only=False)
    heads = {k: v.shape for k, v in ckpt["extra_state_dict"].items() if k.endswith("weight")}
    assert heads and all(s[0] == 4 * 16 for s in heads.values())
    assert ckpt["distillation"]["projections"]["feature_loss"] == "codebook"


def test_codebook_loss_differs_from_mse_and_learns(cb_cache, tiny_corpus, tmp_path):
    cfg = build_dataclass(ExperimentConfig, student_dict(tiny_corpus, cb_cache, tmp_path / "cb", epochs=3,
                                                         feature_loss="codebook", gamma=1.0))
    train_student.run(cfg, **QUIET)
    recs = [json.loads(line) for line in (tmp_path / "cb" / "metrics.jsonl").read_text().splitlines()]
    feats = [r["train/feature"] for r in recs if "train/feature" in r]
    assert feats[0] > feats[-1]                              # the heads learn to predict the indexes
    assert feats[0] > 0.5 * 4 * np.log(16)                   # a CE over 4 codebooks of 16, not an MSE


@pytest.mark.parametrize("codecs,sets,match", [
    ({"hidden": "float16"}, {}, r"teacher layer 1, which .* stores with the float16 codec"),
    ({"hidden": BOOK, "lowrank_fit_frames": 400}, {"layer_mapping": {1: 2}}, r"teacher layer 2|layer_mapping"),
    ({"hidden": BOOK, "lowrank_fit_frames": 400}, {"gamma": 0.0}, r"needs distill.gamma > 0"),
])
def test_codebook_loss_refuses_what_it_cannot_read(tiny_teacher, tiny_corpus, tmp_path, codecs, sets, match):
    cache = tmp_path / "c.zarr"
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, cache, codecs=codecs), **QUIET)
    cfg = build_dataclass(ExperimentConfig, student_dict(tiny_corpus, cache, tmp_path / "s",
                                                         **{"feature_loss": "codebook", **sets}))
    with pytest.raises(OfflineKDError, match=match):
        train_student.run(cfg, **QUIET)
    assert not (tmp_path / "s" / "checkpoint_last.pt").exists()


@pytest.mark.parametrize("spec,match", [
    ({"num_codebooks": 0}, "num_codebooks must be an integer in 1..24"),
    ({"num_codebooks": 25}, "num_codebooks must be an integer in 1..24"),
    ({"entries": 257}, "entries must be an integer in 2..256"),
    ({"entries": 1}, "entries must be an integer in 2..256"),
    ({"entries": 16.0}, "entries must be an integer in 2..256"),
    ({"num_codebooks": True}, "num_codebooks must be an integer"),
    ({"iterations": 1001}, r"iterations must be an integer in 1\.\.1000"),
    ({"fit_frames": 1}, r"fit_frames must be an integer in 2\.\.10000000"),
    ({"fit_frames": 10 ** 7 + 1}, r"fit_frames must be an integer in 2\.\.10000000"),
])
def test_codebook_settings_out_of_range(spec, match):
    with pytest.raises(OfflineKDError, match=match):
        codec_from_spec("hidden", {"name": "codebook", "dim": 24, "num_codebooks": 12, **spec})


def test_fitting_on_fewer_frames_than_entries_is_refused_and_writes_nothing(tiny_teacher, tiny_corpus, tmp_path):
    out = tmp_path / "few.zarr"
    with pytest.raises(OfflineKDError, match="256|frames"):
        dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, out,
                                  codecs={"hidden": {"name": "codebook", "num_codebooks": 2, "entries": 256},
                                          "lowrank_fit_frames": 100}), **QUIET)
    assert not out.exists()


def test_codebook_round_trip_off_zero_and_with_padding():
    """Frames far from 0 (the mean is fitted and added back) and a width the codebooks do not divide."""
    rng = np.random.default_rng(0)
    x = (3.0 + rng.normal(size=(1200, 8)) @ rng.normal(size=(8, 30)) / 4).astype(np.float32)
    q = codec_from_spec("hidden", {"name": "codebook", "dim": 30, "num_codebooks": 8, "entries": 64}).fit(x[:800])
    assert q.sub == 4 and q.codebooks.shape == (8, 64, 4)
    y = q.decode(q.encode(x[800:]))
    rel = ((y - x[800:]) ** 2).sum() / (x[800:] ** 2).sum()
    assert rel < 0.01 and abs(q.relative_error - rel) < 0.01


def test_repeated_frames_still_give_distinct_entries_that_re_encode_to_themselves():
    """A fit sample full of repeated frames (k-means leaves duplicate or empty entries): every entry is moved until
    it is distinct, so decode -> re-encode gives back any stored index; too few distinct frames is refused."""
    rng = np.random.default_rng(1)
    distinct = rng.normal(size=(40, 12)).astype(np.float32)
    x = distinct[rng.integers(0, 40, 600)]
    q = codec_from_spec("hidden", {"name": "codebook", "dim": 12, "num_codebooks": 3, "entries": 32}).fit(x)
    st = q.device_state("cpu")
    own = torch.arange(32)[:, None].expand(32, 3)
    np.testing.assert_array_equal(q.codes_torch(q.decode_torch({"/codes": own}, st), st).numpy(), own.numpy())
    codes = q.encode(x)["/codes"]
    np.testing.assert_array_equal(q.encode(q.decode({"/codes": codes}))["/codes"], codes)
    with pytest.raises(OfflineKDError, match="fewer distinct sub-vectors than its 64 entries"):
        codec_from_spec("hidden", {"name": "codebook", "dim": 12, "num_codebooks": 3, "entries": 64}).fit(x)


def test_codebooks_of_padding_only_are_refused_and_zero_frames_decode():
    with pytest.raises(OfflineKDError, match="padding only"):
        codec_from_spec("hidden", {"name": "codebook", "dim": 10, "num_codebooks": 6})
    rng = np.random.default_rng(0)
    q = codec_from_spec("hidden", {"name": "codebook", "dim": 10, "num_codebooks": 5, "entries": 16}).fit(
        rng.normal(size=(100, 10)).astype(np.float32))
    assert q.decode({"/codes": np.zeros((0, 5), np.uint8)}).shape == (0, 10)


def test_kmeans_iterations_lower_the_reconstruction_error():
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(3000, 6)) @ rng.normal(size=(6, 16))).astype(np.float32)
    spec = {"name": "codebook", "dim": 16, "num_codebooks": 4, "entries": 32}
    one = codec_from_spec("hidden", {**spec, "iterations": 1}).fit(x).relative_error
    many = codec_from_spec("hidden", {**spec, "iterations": 15}).fit(x).relative_error
    assert many < 0.9 * one


def test_the_fitted_mean_is_per_dimension():
    """Each dimension's own mean is removed before quantising (a scalar mean of the whole sample would leave each
    dimension's offset to the codebooks)."""
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(600, 8)) + np.arange(8) * 5.0).astype(np.float32)
    q = codec_from_spec("hidden", {"name": "codebook", "dim": 8, "num_codebooks": 4, "entries": 16}).fit(x)
    np.testing.assert_allclose(q.mean, x.mean(0), rtol=1e-5, atol=1e-5)
    assert q.mean.shape == (8,) and q.mean.dtype == np.float32


def test_kmeans_runs_on_fit_frames_rows_evenly_strided(monkeypatch):
    """k-means sees at most `fit_frames` rows of the fit sample, taken with an even stride over all of it (not its
    head), and every row when the sample is no larger."""
    from offline_kd.cache.codecs import codebook
    seen = []
    real = codebook.kmeans
    monkeypatch.setattr(codebook, "kmeans", lambda x, *a: seen.append(x.clone()) or real(x, *a))
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1000, 4)).astype(np.float32)
    spec = {"name": "codebook", "dim": 4, "num_codebooks": 2, "entries": 8, "iterations": 2}
    q = codec_from_spec("hidden", {**spec, "fit_frames": 300}).fit(x)
    want = torch.from_numpy(x[::3][:300] - q.mean)
    assert len(seen) == 2 and seen[0].shape == (300, 2)
    torch.testing.assert_close(seen[0], want[:, :2])
    torch.testing.assert_close(seen[1], want[:, 2:])
    seen.clear()
    codec_from_spec("hidden", {**spec, "fit_frames": 1000}).fit(x)
    assert seen[0].shape == (1000, 2)
    seen.clear()
    codec_from_spec("hidden", {**spec, "fit_frames": 999}).fit(x)       # stride 1, the first 999 rows
    torch.testing.assert_close(seen[0], torch.from_numpy(x[:999, :2] - x.mean(0)[:2]))


def test_kmeans_reseeds_empty_entries_with_the_farthest_rows():
    """Starting from centroids drawn on one repeated row, the entries left empty take the rows farthest from their
    centroid, and the fit ends on the three distinct points."""
    from offline_kd.cache.codecs.codebook import kmeans
    a, b, c = [0.0, 0.0], [10.0, 0.0], [0.0, -7.0]
    x = torch.tensor([a] * 20 + [b, c])
    for seed in range(5):
        got = kmeans(x, 3, 4, torch.Generator().manual_seed(seed))
        assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, (a, b, c)))


def test_nearest_in_chunks_equals_the_brute_force_argmin():
    from offline_kd.cache.codecs.codebook import nearest
    g = torch.Generator().manual_seed(0)
    books = torch.randn(3, 5, 2, generator=g)
    x = torch.randn(11, 6, generator=g) * 2
    want = ((x.view(11, 3, 1, 2) - books[None]) ** 2).sum(-1).argmin(-1)
    for chunk in (1, 4, 11, 512):
        torch.testing.assert_close(nearest(x, books, 2, chunk=chunk), want)


def test_kmeans_on_small_values_and_one_iteration_reseeds_the_farthest_row():
    """Distances far below 1 count (nothing clamps or thresholds them at 1); an entry left empty takes the row
    farthest from its centroid, not the nearest."""
    from offline_kd.cache.codecs.codebook import kmeans
    a, b, c = [0.0, 0.0], [0.1, 0.0], [0.0, -0.07]
    x = torch.tensor([a] * 20 + [b, c])
    for seed in range(5):
        got = kmeans(x, 3, 4, torch.Generator().manual_seed(seed))
        np.testing.assert_allclose(sorted(map(tuple, got.tolist())), sorted(map(tuple, (a, b, c))), atol=1e-6)
    x = torch.tensor([[0.0, 0.0]] * 200 + [[1.0, 0.0], [10.0, 0.0]])
    seed = next(s for s in range(100) if (torch.randperm(202, generator=torch.Generator().manual_seed(s))[:2]
                                          < 200).all())            # both entries start on the repeated row
    got = kmeans(x, 2, 1, torch.Generator().manual_seed(seed))
    assert got[1].tolist() == [10.0, 0.0]
    x = x / 100                       # the same at distances far below 1: the farthest row, not a repeated one
    got = kmeans(x, 2, 1, torch.Generator().manual_seed(seed))
    assert got[1].tolist() == x[-1].tolist()


def test_the_fit_is_seeded():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(500, 8)).astype(np.float32)
    spec = {"name": "codebook", "dim": 8, "num_codebooks": 2, "entries": 16, "iterations": 3}
    torch.manual_seed(0)
    one = codec_from_spec("hidden", spec).fit(x).codebooks
    torch.manual_seed(1)          # the global generator does not matter, only `seed`
    np.testing.assert_array_equal(codec_from_spec("hidden", spec).fit(x).codebooks, one)
    assert not np.array_equal(codec_from_spec("hidden", {**spec, "seed": 1}).fit(x).codebooks, one)


def test_settings_at_their_bounds_are_accepted():
    for spec in ({"iterations": 1000}, {"fit_frames": 2}, {"fit_frames": 10 ** 7}, {"entries": 256},
                 {"num_codebooks": 24}):
        codec_from_spec("hidden", {"name": "codebook", "dim": 24, "num_codebooks": 12, **spec})


def test_the_stored_fit_error_is_the_relative_squared_error_on_the_fit_sample():
    """Small values (sum of squares far below 1) and a float64 sample: the state is float32, as from float32."""
    rng = np.random.default_rng(6)
    x = (1e-3 * rng.normal(size=(400, 6)) @ rng.normal(size=(6, 12))).astype(np.float32)
    spec = {"name": "codebook", "dim": 12, "num_codebooks": 3, "entries": 16, "iterations": 4}
    q = codec_from_spec("hidden", spec).fit(x)
    y = q.decode(q.encode(x)).astype(np.float64)
    want = ((y - x) ** 2).sum() / (x.astype(np.float64) ** 2).sum()
    assert 0 < want < 1 and q.relative_error == pytest.approx(want, rel=1e-5)
    assert q.codebooks.dtype == q.mean.dtype == q.fit_error.dtype == np.float32
    q64 = codec_from_spec("hidden", spec).fit(x.astype(np.float64))
    np.testing.assert_array_equal(q64.codebooks, q.codebooks)
    assert q64.codebooks.dtype == np.float32


def test_exactly_as_many_distinct_frames_as_entries_fit_and_fewer_are_refused():
    rng = np.random.default_rng(7)
    x = (1e-3 * rng.normal(size=(16, 4))).astype(np.float32)     # (small values: nothing thresholds at 1)
    spec = {"name": "codebook", "dim": 4, "num_codebooks": 1, "entries": 16}
    q = codec_from_spec("hidden", spec).fit(x)
    assert len(np.unique(q.encode(x)["/codes"])) == 16
    with pytest.raises(OfflineKDError, match="fitting 16 entries needs at least that many frames, the fit sample "
                                             "has 15"):
        codec_from_spec("hidden", spec).fit(x[:15])
    with pytest.raises(OfflineKDError, match="fewer distinct sub-vectors than its 16 entries"):
        codec_from_spec("hidden", spec).fit(np.concatenate([x[:15], x[:1]]))


def test_moving_duplicate_entries_is_seeded():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(40, 6)).astype(np.float32)[rng.integers(0, 40, 500)]
    spec = {"name": "codebook", "dim": 6, "num_codebooks": 2, "entries": 32, "iterations": 2}
    torch.manual_seed(0)
    one = codec_from_spec("hidden", spec).fit(x).codebooks
    torch.manual_seed(1)
    np.testing.assert_array_equal(codec_from_spec("hidden", spec).fit(x).codebooks, one)


def test_the_fit_samples_teacher_outputs_are_written_not_recomputed(tiny_teacher, tiny_corpus, tmp_path,
                                                                     monkeypatch):
    """The teacher runs once on every utterance, the fit sample's included (its outputs are kept for the dump), and
    the cache is the one a dump that ran the teacher again on them writes, byte for byte."""
    from offline_kd.distillation import dump
    real_iter, real_fit, seen = dump.iterate_outputs, dump._fit_state, []

    def counting(*a, **k):
        for out in real_iter(*a, **k):
            seen.append(len(out[2]))
            yield out
    monkeypatch.setattr(dump, "iterate_outputs", counting)
    codecs = {"hidden": BOOK, "log_probs": {"name": "topk", "k": 3, "tail": "lowrank", "tail_rank": 4},
              "lowrank_fit_frames": 400}
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, tmp_path / "a.zarr", codecs=codecs), **QUIET)
    a = zarr.open_group(str(tmp_path / "a.zarr"), mode="r")
    assert sum(seen) == a["train/offset"].shape[0] - 1 + a["dev/offset"].shape[0] - 1
    monkeypatch.setattr(dump, "_fit_state", lambda *args: real_fit(*args[:8], None))     # without keeping them
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, tmp_path / "b.zarr", codecs=codecs), **QUIET)
    b = zarr.open_group(str(tmp_path / "b.zarr"), mode="r")
    arrays = {name: x for name, x in a.members(max_depth=None) if isinstance(x, zarr.Array)}
    assert {"train/log_probs/tail_q", "train/hidden_1/codes", "dev/hidden_3/codes"} <= set(arrays), sorted(arrays)
    assert sorted(arrays) == sorted(n for n, x in b.members(max_depth=None) if isinstance(x, zarr.Array))
    for name, x in arrays.items():
        np.testing.assert_array_equal(x[...], b[name][...], err_msg=name)


def test_the_dump_reports_its_codec_fitting_time(tiny_teacher, tiny_corpus, tmp_path):
    """`fit_seconds` (what benchmarks/dump_throughput.py subtracts as the fixed cost): the codecs' fitting time,
    within the dump's own, and 0 for a dump whose codecs fit nothing."""
    codecs = {"hidden": BOOK, "log_probs": {"name": "topk", "k": 3, "tail": "lowrank", "tail_rank": 4},
              "lowrank_fit_frames": 400}
    start = time.perf_counter()
    res = dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, tmp_path / "a.zarr", codecs=codecs), **QUIET)
    assert 0 < res["fit_seconds"] < time.perf_counter() - start
    res = dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, tmp_path / "b.zarr",
                                    codecs={"hidden": "float16", "log_probs": "float16"}), **QUIET)
    assert res["fit_seconds"] == 0
