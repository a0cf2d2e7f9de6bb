"""One round-trip suite every codec must pass, each with its documented error bound."""

import numpy as np
import pytest

from offline_kd.cache.codecs import (Float16Hidden, Float16LogProbs, Float32Hidden, Float32LogProbs, Int8Hidden,
                                     LowRankHidden, LowRankLogProbs, TopKLogProbs, hidden_codec, log_prob_codec)


def _log_probs(f=200, v=50, peak=6.0, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(f, v))
    z[np.arange(f), rng.integers(0, v, f)] += peak
    return (z - np.log(np.exp(z).sum(1, keepdims=True))).astype(np.float32)


def _hidden(f=300, d=32, rank=32, seed=0):
    rng = np.random.default_rng(seed)
    return np.tanh(rng.normal(size=(f, rank)) @ rng.normal(size=(rank, d)) / np.sqrt(rank)).astype(np.float32)


def _roundtrip(codec, x):
    enc = codec.encode(x)
    assert set(enc) == {a.suffix for a in codec.arrays()}
    for a in codec.arrays():
        assert enc[a.suffix].dtype == np.dtype(a.dtype)
        assert enc[a.suffix].shape == (x.shape[0], *a.shape)
    return codec.decode(enc)


def test_float32_log_probs_exact():
    x = _log_probs()
    np.testing.assert_array_equal(_roundtrip(Float32LogProbs(50), x), x)


def test_float16_log_probs_bound():
    x = _log_probs()
    y = _roundtrip(Float16LogProbs(50), x)
    assert np.all(np.abs(y - x) <= np.abs(x) * 2.0 ** -11 + 1e-7)


@pytest.mark.parametrize("coverage", [None, 0.99])
def test_topk_keeps_top_tokens_and_normalises(coverage):
    x = _log_probs()
    codec = TopKLogProbs(50, k=8, coverage=coverage)
    enc = codec.encode(x)
    y = codec.decode(enc)
    # still a distribution
    np.testing.assert_allclose(np.exp(y.astype(np.float64)).sum(1), 1.0, atol=2e-3)
    # kept tokens are the true top tokens with fp16 values; the argmax never changes
    assert np.array_equal(y.argmax(1), x.argmax(1))
    count = enc["/count"].astype(int)
    for f in range(0, 200, 17):
        top = np.argsort(-x[f])[: count[f]]
        assert set(enc["/indices"][f, : count[f]]) == set(top)
        assert np.all(np.abs(y[f, top] - x[f, top]) <= np.abs(x[f, top]) * 2.0 ** -11 + 1e-6)
    # the tail mass matches what was dropped
    kept = np.exp(np.where(np.arange(8)[None] < count[:, None], enc["/values"].astype(np.float64), -np.inf)).sum(1)
    np.testing.assert_allclose(np.exp(enc["/tail_log_mass"].astype(np.float64)), 1 - kept, atol=3e-3)
    if coverage is not None:
        assert count.min() >= 1 and count.max() <= 8
        reached = kept >= coverage - 2e-3
        assert np.all(reached | (count == 8))


def test_float_hidden_codecs():
    x = _hidden()
    np.testing.assert_array_equal(_roundtrip(Float32Hidden(32), x), x)
    y = _roundtrip(Float16Hidden(32), x)
    assert np.all(np.abs(y - x) <= np.abs(x) * 2.0 ** -11 + 2.0 ** -24)


def test_int8_hidden_bound():
    x = _hidden()
    y = _roundtrip(Int8Hidden(32), x)
    scale = np.abs(x).max(1, keepdims=True) / 127
    assert np.all(np.abs(y - x) <= scale / 2 + 1e-7)


@pytest.mark.parametrize("coeff", ["float16", "int8"])
def test_lowrank_hidden_exact_rank_and_truncated(coeff):
    x = _hidden(rank=8)                         # the data has rank 8 before tanh: mostly low-rank
    full = LowRankHidden(32, 32, coeff).with_state(LowRankHidden(32, 32).fit(x).state())
    y = _roundtrip(full, x)
    tol = 2e-3 if coeff == "float16" else 3e-2
    assert np.abs(y - x).max() < tol
    y8 = _roundtrip(LowRankHidden(32, 8, coeff).with_state(LowRankHidden(32, 8).fit(x).state()), x)
    rel = ((y8 - x) ** 2).sum() / (x ** 2).sum()
    assert rel < 0.05


def test_lowrank_int8_whitening_keeps_small_components():
    """Components 1000x smaller than the first keep their precision: each is scaled by its own deviation."""
    rng = np.random.default_rng(3)
    c = rng.normal(size=(500, 4)) * np.array([100.0, 1.0, 0.3, 0.1])
    q, _ = np.linalg.qr(rng.normal(size=(16, 4)))
    x = (c @ q.T).astype(np.float32)
    state = LowRankHidden(16, 4).fit(x).state()
    np.testing.assert_allclose(np.sort(state["scale"])[::-1], c.std(0)[np.argsort(-c.std(0))], rtol=0.15)
    white = _roundtrip(LowRankHidden(16, 4, "int8").with_state(state), x)
    plain = _roundtrip(LowRankHidden(16, 4, "int8").with_state({"basis": state["basis"], "mean": state["mean"]}), x)  # scale 1
    small = q[:, 1:]                              # the error along the small components
    err_white = (((white - x) @ small) ** 2).sum()
    err_plain = (((plain - x) @ small) ** 2).sum()
    assert err_white < err_plain / 20


def test_lowrank_log_probs_normalised_exact_at_full_rank_and_close_truncated():
    rng = np.random.default_rng(2)
    v, r = 60, 6
    z = rng.normal(size=(800, r)) @ rng.normal(size=(r, v)) * 2.0          # logits of rank 6
    z[:, 0] += 5.0                                                         # a dominant "blank"
    x = (z - np.log(np.exp(z).sum(1, keepdims=True))).astype(np.float32)
    state = LowRankLogProbs(v, r + 1).fit(x).state()     # + 1: the per-frame centring leaves the rank at most unchanged
    for coeff, tol in (("float16", 1e-5), ("int8", 1e-3)):
        codec = log_prob_codec(LowRankLogProbs(v, r + 1, coeff).to_dict()).with_state(state)
        y = _roundtrip(codec, x)
        assert y.dtype == np.float32
        np.testing.assert_allclose(np.exp(y.astype(np.float64)).sum(1), 1.0, atol=1e-5)
        p = np.exp(x.astype(np.float64))
        kl = (p * (x - y)).sum(1)
        assert kl.mean() < tol, (coeff, kl.mean())
        assert (y.argmax(1) == x.argmax(1)).mean() > 0.99
    two = LowRankLogProbs(v, 2, "float16").with_state(LowRankLogProbs(v, 2).fit(x).state())
    kl2 = (np.exp(x.astype(np.float64)) * (x - _roundtrip(two, x))).sum(1).mean()
    assert kl2 > 1e-2                        # too few components for rank-6 logits: a real approximation error


def test_specs_round_trip_through_to_dict():
    for codec in (Float32LogProbs(7), Float16LogProbs(7), TopKLogProbs(7, 3, 0.9)):
        assert log_prob_codec(codec.to_dict()) == codec
    for codec in (Float32Hidden(4), Float16Hidden(4), Int8Hidden(4)):
        assert hidden_codec(codec.to_dict()) == codec
    assert hidden_codec(LowRankHidden(4, 2, "int8").to_dict()).rank == 2
    assert log_prob_codec(LowRankLogProbs(7, 3, "float16").to_dict()).coeff == "float16"
    with pytest.raises(Exception, match="logits_rank"):
        LowRankLogProbs(7, 8)


def test_topk_tail_mass_is_accurate_on_confident_frames():
    """log(1 - sum(kept)) cancels catastrophically when the kept tokens hold almost everything."""
    v = 1229
    x = np.full((3, v), -30.0)
    x[:, 0] = 0.0
    x = (x - np.log(np.exp(x.astype(np.float64)).sum(1, keepdims=True))).astype(np.float32)
    enc = TopKLogProbs(v, k=4).encode(x)
    expected = np.log(np.exp(x[:, 4:].astype(np.float64)).sum(1))      # the tail: 1225 tokens at ~-30
    np.testing.assert_allclose(enc["/tail_log_mass"], expected, rtol=1e-5)
    assert np.all(np.isfinite(enc["/tail_log_mass"]))


def test_sampled_is_unbiased_and_reproducible():
    from offline_kd.cache.codecs import SampledLogProbs
    one = _log_probs(f=1, v=50, peak=2.0)
    x = np.repeat(one, 4000, axis=0)                      # the same distribution, 4000 independent draws of 16
    codec = log_prob_codec(SampledLogProbs(50, samples=16).to_dict())
    enc = codec.encode(x)
    assert np.all(enc["/counts"].astype(int).sum(1) == 16)
    y = _roundtrip(codec, x)
    probs = np.exp(y.astype(np.float64))
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(probs.mean(0), np.exp(one[0].astype(np.float64)), atol=0.01)   # E[target] = p
    assert np.all(np.isneginf(y[probs == 0]))
    again = codec.encode(x)
    assert all(np.array_equal(enc[k], again[k]) for k in enc)                                # seeded by content


def test_topk_prior_tail_normalises_and_beats_uniform_on_a_shaped_tail():
    rng = np.random.default_rng(1)
    base = rng.normal(scale=3.0, size=50)                     # every frame's tail has the same shape
    z = base[None, :] + rng.normal(scale=0.3, size=(400, 50))
    z[np.arange(400), rng.integers(0, 50, 400)] += 8.0
    x = (z - np.log(np.exp(z).sum(1, keepdims=True))).astype(np.float32)
    prior = np.log(np.exp(x.astype(np.float64)).mean(0))
    spec = TopKLogProbs(50, k=4, tail="prior").to_dict()
    assert spec["tail"] == "prior" and "prior" not in spec   # the fitted prior lives in the cache, not the spec
    codec = log_prob_codec(spec).with_state({"prior": prior})
    y = _roundtrip(codec, x)
    np.testing.assert_allclose(np.exp(y.astype(np.float64)).sum(1), 1.0, atol=3e-3)
    uni = TopKLogProbs(50, k=4).decode(TopKLogProbs(50, k=4).encode(x))

    def kl(q):
        p = np.exp(x.astype(np.float64))
        return float((p * (x - q)).sum(1).mean())
    assert kl(y) < 0.8 * kl(uni)


def test_topk_lowrank_tail_keeps_head_and_tail_mass_and_shapes_the_tail():
    rng = np.random.default_rng(4)
    v, r = 80, 5
    z = rng.normal(size=(600, r)) @ rng.normal(size=(r, v)) * 5.0      # rank-5 logits, mostly peaky frames
    x = (z - np.log(np.exp(z).sum(1, keepdims=True))).astype(np.float32)
    assert np.median(np.exp(x.max(1))) > 0.8
    spec = TopKLogProbs(v, k=4, coverage=0.999, tail="lowrank", tail_rank=r + 1).to_dict()
    assert spec["tail"] == "lowrank" and spec["tail_rank"] == r + 1
    codec = log_prob_codec(spec).with_state(LowRankLogProbs(v, r + 1).fit(x).state())
    enc = codec.encode(x)
    y = _roundtrip(codec, x)
    np.testing.assert_allclose(np.exp(y.astype(np.float64)).sum(1), 1.0, atol=2e-3)
    assert np.array_equal(y.argmax(1), x.argmax(1))
    count = enc["/count"].astype(int)
    for f in range(0, 600, 31):                 # the kept head is exact up to fp16, the tail sums to the stored mass
        top = np.argsort(-x[f])[: count[f]]
        assert np.all(np.abs(y[f, top] - x[f, top]) <= np.abs(x[f, top]) * 2.0 ** -11 + 1e-6)
        rest = np.setdiff1d(np.arange(v), top)
        np.testing.assert_allclose(np.log(np.exp(y[f, rest].astype(np.float64)).sum()), enc["/tail_log_mass"][f],
                                   atol=1e-4)
    p = np.exp(x.astype(np.float64))

    def kl_at(y, t):
        a = x / t - np.log(np.exp(x.astype(np.float64) / t).sum(1, keepdims=True))
        b = y / t - np.log(np.exp(y.astype(np.float64) / t).sum(1, keepdims=True))
        return (np.exp(a) * (a - b)).sum(1).mean()
    uniform = _roundtrip(TopKLogProbs(v, k=4, coverage=0.999), x)
    for t in (1.0, 4.0):                        # the shaped tail is far closer than a uniform one at any T
        assert kl_at(y, t) < kl_at(uniform, t) / 50
    assert (p * (x - y)).sum(1).mean() < 1e-3


def test_lowrank_step_quantiser_meets_its_target_error_and_refuses_an_impossible_one():
    rng = np.random.default_rng(5)
    d = 48
    spectrum = np.exp(-np.arange(d) / 8.0)                    # decaying component sizes, like hidden states
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    fit_x = ((rng.normal(size=(3000, d)) * spectrum) @ q.T + 0.1).astype(np.float32)
    x = ((rng.normal(size=(1000, d)) * spectrum) @ q.T + 0.1).astype(np.float32)
    for target in (0.002, 0.01, 0.05):
        codec = LowRankHidden(d, d, "step", target)
        spec = codec.to_dict()
        assert spec["target_error"] == target
        state = codec.fit(fit_x).state()
        assert state["step"].shape == (1,)
        arrays = codec.arrays()
        assert [(a.suffix, a.dtype, a.transpose) for a in arrays] == [("/codes", "int8", True)]
        y = _roundtrip(hidden_codec(spec).with_state(state), x)
        rel = ((y - x) ** 2).sum() / (x ** 2).sum()
        assert 0.6 * target < rel < 1.3 * target, (target, rel)   # fitted on other frames of the same source
    with pytest.raises(Exception, match="raise lowrank_rank"):
        LowRankHidden(d, 4, "step", 0.001).fit(fit_x)            # 4 components cannot hold 99.9% of the energy


def test_topk_count_is_the_smallest_prefix_reaching_the_coverage():
    """Per frame, count = the fewest top tokens whose mass reaches `coverage` (capped at k), computed here
    independently; on peaky frames that is well below k."""
    k, coverage = 8, 0.99
    x = np.concatenate([_log_probs(f=300, v=50, peak=9.0, seed=1), _log_probs(f=100, v=50, peak=2.0, seed=2)])
    count = TopKLogProbs(50, k=k, coverage=coverage).encode(x)["/count"].astype(int)
    for f in range(len(x)):
        p = np.sort(np.exp(x[f].astype(np.float64)))[::-1]
        need = int(np.argmax(np.cumsum(p) >= coverage)) + 1 if np.cumsum(p)[-1] >= coverage else len(p)
        assert count[f] == min(need, k), f
    assert count.mean() < 0.6 * k
    assert (count < k).any() and (count == k).any()     # both regimes are exercised


def test_sampled_targets_match_the_teacher_within_sampling_error():
    """Chi-square goodness of fit of the pooled draws, and each class's mean within 5 standard errors."""
    from offline_kd.cache.codecs import SampledLogProbs
    v, frames, n = 50, 4000, 16
    p = np.exp(_log_probs(f=1, v=v, peak=2.0)[0].astype(np.float64))
    enc = SampledLogProbs(v, samples=n).encode(np.repeat(np.log(p)[None].astype(np.float32), frames, axis=0))
    observed = np.zeros(v)
    np.add.at(observed, enc["/indices"].astype(int).ravel(), enc["/counts"].astype(float).ravel())
    total = frames * n
    assert observed.sum() == total
    expected = total * p / p.sum()
    big = expected >= 5                               # pool the classes too rare for the chi-square approximation
    obs, exp = observed[big], expected[big]
    if (~big).any():
        obs, exp = np.append(obs, observed[~big].sum()), np.append(exp, expected[~big].sum())
    chi2 = float(((obs - exp) ** 2 / exp).sum())
    df = len(obs) - 1
    assert chi2 < df + 6 * np.sqrt(2 * df), (chi2, df)  # ~ the 1e-5 upper quantile for these df
    mean = observed / total
    se = np.sqrt(p * (1 - p) / total)
    assert np.all(np.abs(mean - p) <= 5 * se + 1e-12)


# ------------------------------------------------------------------ top-k: edges the mutation run found untested
def test_topk_settings_are_checked_at_their_edges():
    from offline_kd.errors import OfflineKDError
    from offline_kd.cache.codecs import TopKLogProbs
    TopKLogProbs(5, k=1)
    TopKLogProbs(5, k=4, coverage=1.0)
    for kw, msg in (({"k": 0}, "codecs.topk_k must be in 1..4, got 0"), ({"k": 5}, "codecs.topk_k must be in 1..4, got 5"),
                    ({"k": 2, "coverage": 0.0}, r"codecs.topk_coverage must be in \(0, 1\], got 0.0"),
                    ({"k": 2, "coverage": 1.5}, r"codecs.topk_coverage must be in \(0, 1\], got 1.5"),
                    ({"k": 2, "tail": "flat"}, "codecs.topk_tail must be uniform, prior or lowrank, got 'flat'")):
        with pytest.raises(OfflineKDError, match=f"^{msg}$"):
            TopKLogProbs(5, **kw)
    # the per-frame count's dtype holds k; the tail's coefficient setting reaches its low-rank shape and the spec
    assert TopKLogProbs(1000, k=255).arrays()[2].dtype == "uint8"
    assert TopKLogProbs(1000, k=256).arrays()[2].dtype == "uint16"
    assert TopKLogProbs(1000, k=4).arrays()[1].dtype == "uint16" and TopKLogProbs(70000, k=4).arrays()[1].dtype == "int32"
    c = TopKLogProbs(50, k=4, tail="lowrank", tail_rank=6, tail_coeff="float16")
    assert c.shape.coeff == "float16" and c.shape.rank == 6
    assert TopKLogProbs.from_dict({k: v for k, v in c.to_dict().items() if k != "name"}).shape.coeff == "float16"
    assert c.state_paths("log_probs") == {k: f"lowrank/log_probs/{k}" for k in ("basis", "mean", "scale")}


def test_topk_encoding_convention_for_unused_slots_and_exact_coverage():
    """Slots past a frame's count hold -inf values and token 0; a frame whose first probability equals the coverage
    exactly keeps one token."""
    from offline_kd.cache.codecs import TopKLogProbs
    x = np.log(np.array([[0.5, 0.3, 0.1, 0.05, 0.05]], np.float32))
    first = float(np.exp(np.float64(x[0, 0])))
    enc = TopKLogProbs(5, k=3, coverage=first).encode(x)
    assert enc["/count"].tolist() == [1]
    assert np.isneginf(enc["/values"][0, 1:]).all() and enc["/indices"][0, 1:].tolist() == [0, 0]


def test_topk_tails_decode_to_a_distribution_even_at_the_edges():
    """uniform with every token but one kept, and prior with a prior state that does not sum to one: the decoded
    frame sums to one either way; a fitted prior is the sample's mean distribution."""
    from offline_kd.cache.codecs import TopKLogProbs
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 5)).astype(np.float32)
    x = x - np.log(np.exp(x).sum(1, keepdims=True))
    uni = TopKLogProbs(5, k=4)
    np.testing.assert_allclose(np.exp(uni.decode(uni.encode(x))).sum(1), 1.0, rtol=1e-3)
    fitted = TopKLogProbs(5, k=2, tail="prior").fit(x)
    np.testing.assert_allclose(np.exp(fitted.prior), np.exp(x).mean(0), rtol=1e-5)
    skewed = TopKLogProbs(5, k=2, tail="prior").with_state({"prior": np.log(np.array([4.0, 3.0, 2.0, 1.0, 1.0]))})
    np.testing.assert_allclose(np.exp(skewed.decode(skewed.encode(x))).sum(1), 1.0, rtol=1e-3)


# ---------------------------------------------------------------- low-rank: what the mutation run found untested
def test_lowrank_pca_is_exact_in_both_branches_and_scales_are_coefficient_deviations():
    """Up to 4,096 columns the scatter matrix's eigenvectors, above a randomised SVD: both recover a planted
    rank-r subspace, and `scale` is each coefficient's standard deviation over the sample."""
    from offline_kd.cache.codecs.lowrank import _pca
    rng = np.random.default_rng(0)
    for dim in (64, 4100):
        basis = np.linalg.qr(rng.normal(size=(dim, 4)))[0].T                      # (4, dim) orthonormal rows
        coeffs = rng.normal(size=(300, 4)) * np.array([5.0, 3.0, 2.0, 0.5])
        x = coeffs @ basis + 0.7 + 1e-4 * rng.normal(size=(300, dim))
        fit = _pca(x, 4)
        np.testing.assert_allclose(fit["mean"], x.mean(0), atol=1e-5)
        proj = fit["basis"].astype(np.float64) @ basis.T                           # (4, 4): a rotation if the subspace is right
        np.testing.assert_allclose(np.abs(np.linalg.det(proj)), 1.0, atol=1e-3, err_msg=f"dim {dim}")
        c = (x - x.mean(0)) @ fit["basis"].T.astype(np.float64)
        np.testing.assert_allclose(fit["scale"], np.sqrt((c ** 2).mean(0)), rtol=1e-3, err_msg=f"dim {dim}")
    tiny = _pca(np.tile(np.arange(3.0), (5, 1)), 2)
    assert (tiny["scale"] == 1.0).all()            # components without variance are not divided by ~0


def test_lowrank_step_meets_its_target_error_and_refuses_an_impossible_one():
    from offline_kd.cache.codecs import LowRankHidden
    from offline_kd.errors import OfflineKDError
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(2000, 32)) * np.linspace(3.0, 0.05, 32)).astype(np.float32) + 2.0   # the mean counts
    for target in (0.02, 0.05, 0.1):
        codec = LowRankHidden(32, rank=24, coeff="step", target_error=target).fit(x)
        err = float(((codec.decode(codec.encode(x)) - x) ** 2).sum() / (x ** 2).sum())
        assert 0.6 * target < err < 1.15 * target, (target, err)
    centred = x - x.mean(0)
    beyond = float(np.sort(centred.var(0))[::-1][4:].sum()) / float((x ** 2).sum(1).mean())
    with pytest.raises(OfflineKDError, match=r"the components beyond lowrank_rank already hold (\d+\.\d\d)% of the "
                                             r"energy, more than lowrank_target_error \(0\.01%\); raise lowrank_rank") as e:
        LowRankHidden(32, rank=4, coeff="step", target_error=0.0001).fit(x)
    shown = float(str(e.value).split("hold ")[1].split("%")[0])
    assert abs(shown - 100 * beyond) < 0.3, (shown, 100 * beyond)
    with pytest.raises(OfflineKDError, match=r"lowrank_target_error 1e-06 needs steps .* too fine for int8 codes"):
        LowRankHidden(32, rank=32, coeff="step", target_error=1e-6).fit(x)
    LowRankHidden(32, rank=1)
    LowRankHidden(32, rank=8, coeff="int8", target_error=5.0)          # the target is a step-mode setting only
    for kw, msg in (({"rank": 0}, r"codecs.lowrank_rank must be in 1..32, got 0"),
                    ({"rank": 33}, r"codecs.lowrank_rank must be in 1..32, got 33"),
                    ({"rank": 8, "coeff": "int4"}, r"codecs.lowrank_coeff must be float16 or int8 or step, got 'int4'"),
                    ({"rank": 8, "coeff": "step", "target_error": 0.0},
                     r"codecs.lowrank_target_error must be in \(0, 1\), got 0.0"),
                    ({"rank": 8, "coeff": "step", "target_error": 1.0},
                     r"codecs.lowrank_target_error must be in \(0, 1\), got 1.0")):
        with pytest.raises(OfflineKDError, match=f"^{msg}$"):
            LowRankHidden(32, **kw)


def test_float16_clips_to_its_range_and_float32_keeps_values():
    """A log-prob below float16's range is stored as -65000 (finite), not -inf; float32 stores it as it is."""
    x = np.array([[-1e6, 0.0], [-70000.0, -1e-3]], np.float32)
    f16 = Float16LogProbs(2).encode(x)
    stored = next(iter(f16.values()))
    assert np.isfinite(stored).all() and stored.min() == np.float16(-65000.0)
    np.testing.assert_array_equal(next(iter(Float32LogProbs(2).encode(x).values())), x)
    big = Float16Hidden(2).encode(np.array([[1e6, -1e6]], np.float32))
    assert next(iter(big.values())).tolist() == [[float(np.float16(65000.0)), float(np.float16(-65000.0))]]


def test_sampled_counts_are_checked_at_their_edges():
    from offline_kd.cache.codecs import SampledLogProbs
    from offline_kd.errors import OfflineKDError
    SampledLogProbs(10, samples=1)
    SampledLogProbs(10, samples=255)
    assert SampledLogProbs(10, samples=4).arrays()[0].dtype == "uint16"
    for n in (0, 256):
        with pytest.raises(OfflineKDError, match=f"codecs.sampled_n must be in 1..255, got {n}"):
            SampledLogProbs(10, samples=n)
