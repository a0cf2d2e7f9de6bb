"""Every registered codec meets the contract of offline_kd/cache/codecs/base.py: a codec that lands without an
example here fails `test_every_registered_codec_has_an_example`, so it is tested the day it lands."""

from __future__ import annotations

import numpy as np
import pytest

from offline_kd.cache.codecs import codec_from_spec, registered

V, D = 40, 24
EXAMPLES = {
    ("log_probs", "float32"): [{"num_classes": V}],
    ("log_probs", "float16"): [{"num_classes": V}],
    ("log_probs", "topk"): [{"num_classes": V, "k": 4}, {"num_classes": V, "k": 6, "coverage": 0.99, "tail": "prior"},
                            {"num_classes": V, "k": 4, "coverage": 0.999, "tail": "lowrank", "tail_rank": 8}],
    ("log_probs", "sampled"): [{"num_classes": V, "samples": 16}],
    ("log_probs", "lowrank"): [{"num_classes": V, "rank": 8, "coeff": "int8"},
                               {"num_classes": V, "rank": 8, "coeff": "float16"}],
    ("hidden", "float32"): [{"dim": D}],
    ("hidden", "float16"): [{"dim": D}],
    ("hidden", "int8"): [{"dim": D}],
    ("hidden", "lowrank"): [{"dim": D, "rank": 12, "coeff": "float16"}, {"dim": D, "rank": 12, "coeff": "int8"},
                            {"dim": D, "rank": D, "coeff": "step", "target_error": 0.01}],
    ("hidden", "codebook"): [{"dim": D, "num_codebooks": 12, "entries": 256},
                             {"dim": D, "num_codebooks": 5, "entries": 128, "seed": 3}],   # 24 = 5 x 5 - 1 (padded)
}
CASES = [(f, n, i, spec) for (f, n), specs in EXAMPLES.items() for i, spec in enumerate(specs)]


def _sample(field: str, frames: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if field == "log_probs":
        z = rng.normal(size=(frames, V)) + 6.0 * (np.arange(V)[None] == rng.integers(0, V, (frames, 1)))
        return (z - np.log(np.exp(z).sum(1, keepdims=True))).astype(np.float32)
    basis = np.random.default_rng(0).normal(size=(8, D))      # one source: fit and test frames share a subspace
    return np.tanh(rng.normal(size=(frames, 8)) @ basis / 3).astype(np.float32)


def test_every_registered_codec_has_an_example():
    for field in ("log_probs", "hidden"):
        missing = sorted(set(registered(field)) - {n for f, n in EXAMPLES if f == field})
        assert not missing, f"add an example spec for the {field} codec(s) {missing} to EXAMPLES"


@pytest.mark.parametrize("field,name,i,spec", CASES, ids=[f"{f}-{n}-{i}" for f, n, i, _ in CASES])
def test_codec_contract(field, name, i, spec):
    codec = codec_from_spec(field, {"name": name, **spec})
    # spec round trip: the stored spec rebuilds the same (unfitted) codec
    assert codec_from_spec(field, codec.to_dict()) == codec
    fitted = codec.fit(_sample(field, 600, 1)) if codec.fit_required else codec
    assert not fitted.fit_required
    # state round trip: spec + stored state rebuild the fitted codec, and every state key has a cache path
    state = fitted.state()
    paths = fitted.state_paths(field if field == "log_probs" else "hidden_2")
    assert set(state) <= set(paths) and len(set(paths.values())) == len(paths)
    rebuilt = codec_from_spec(field, fitted.to_dict()).with_state(state) if state else codec
    assert rebuilt == fitted
    # arrays declared == arrays written, with their dtypes and per-frame shapes
    x = _sample(field, 200, 2)
    enc = fitted.encode(x)
    declared = {a.suffix: a for a in fitted.arrays()}
    assert set(enc) == set(declared)
    for suffix, a in declared.items():
        assert enc[suffix].dtype == np.dtype(a.dtype) and enc[suffix].shape == (len(x), *a.shape), suffix
    # decode: same shape, float32, and (log-probs) a normalised distribution that keeps the argmax
    y = fitted.decode(enc)
    assert y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_array_equal(rebuilt.decode(enc), y)
    if field == "log_probs":
        np.testing.assert_allclose(np.exp(y.astype(np.float64)).sum(1), 1.0, atol=2e-2)
        assert not np.isnan(y).any()
        if name not in ("sampled", "lowrank"):      # (random logits are not low-rank; sampled is a draw)
            assert (y.argmax(1) == x.argmax(1)).mean() > 0.95
        # gather: each frame's token's decoded log-prob, bit-equal to decode (the argmax, kept by top-k, and any
        # token, most of them in a top-k tail)
        for tokens in (x.argmax(1), np.random.default_rng(3).integers(0, V, len(x))):
            np.testing.assert_array_equal(fitted.gather(enc, tokens), y[np.arange(len(x)), tokens])
    else:       # (vector quantisation with few, small codebooks is coarse by design: held-out error up to 0.2)
        assert ((y - x) ** 2).sum() / (x ** 2).sum() < (0.2 if name == "codebook" and spec["num_codebooks"] < 8
                                                        else 0.05)


@pytest.mark.parametrize("field,name,i,spec", CASES, ids=[f"{f}-{n}-{i}" for f, n, i, _ in CASES])
def test_decode_on_a_torch_device_equals_decode(field, name, i, spec):
    """decode_torch (the codes decoded on the training device, #14) gives what decode gives, -inf where it does."""
    import torch
    from offline_kd.data.targets import host_tensor
    codec = codec_from_spec(field, {"name": name, **spec})
    fitted = codec.fit(_sample(field, 600, 1)) if codec.fit_required else codec
    x = _sample(field, 200, 3)
    if field == "log_probs":                       # a confident frame, and one the codec keeps almost nothing of
        x[0] = np.log(np.full(V, 1e-9) + 10.0 * (np.arange(V) == 3))
        x[0] -= np.log(np.exp(x[0].astype(np.float64)).sum())
    enc = fitted.encode(x)
    want = fitted.decode(enc)
    assert host_tensor(np.zeros(2, np.uint16)).dtype == torch.int32      # (torch before 2.3 has no uint16)
    got = fitted.decode_torch({k: host_tensor(v) for k, v in enc.items()}, fitted.device_state(torch.device("cpu")))
    assert got.dtype == torch.float32 and tuple(got.shape) == want.shape
    got = got.numpy()
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("field,name,i,spec", CASES, ids=[f"{f}-{n}-{i}" for f, n, i, _ in CASES])
def test_encode_on_a_torch_device_matches_encode(field, name, i, spec):
    """encode_torch (the dump encoding where the teacher ran, #14 item 3) stores what encode stores: the same codes
    where the arithmetic is the same (dense, int8, top-k selection), codes at most one step apart where a matrix
    product's rounding can move them (low-rank projections), and values that decode alike."""
    import torch
    codec = codec_from_spec(field, {"name": name, **spec})
    fitted = codec.fit(_sample(field, 600, 1)) if codec.fit_required else codec
    x = _sample(field, 200, 4)
    if field == "hidden":
        x[0] = 0.0                                 # a silent frame: int8 scales of 0 must not divide by 0
    want = fitted.encode(x)
    got = fitted.encode_torch(torch.from_numpy(x), fitted.device_state(torch.device("cpu")))
    assert set(got) == set(want)
    got = {k: v.numpy().astype(want[k].dtype) for k, v in got.items()}
    for k in want:
        assert got[k].shape == want[k].shape, k
        if want[k].dtype.kind == "f":
            np.testing.assert_allclose(got[k], want[k], rtol=2e-3, atol=1e-6, err_msg=k)
        else:
            close = np.abs(got[k].astype(np.int64) - want[k].astype(np.int64))
            assert close.max() <= (1 if name in ("lowrank",) or k.startswith("/tail_") else 0), k
            assert (close == 0).mean() > 0.99, k
    np.testing.assert_allclose(fitted.decode(got), fitted.decode(want), rtol=1e-3, atol=2e-3)


@pytest.mark.parametrize("tail", ["uniform", "prior"])
def test_gather_of_a_token_in_the_tail_ignores_the_unused_slots(tail):
    """Frames whose coverage is reached before k keep fewer tokens; the unused slots hold index 0 and -inf. The blank
    (class 0) in the tail of such a frame is the tail's value, not an unused slot's -inf (a mutant comparing the
    slot with `<= count` survived the suite before this test)."""
    v, k = 8, 4
    x = np.full((6, v), np.log(0.001 / (v - 1)), dtype=np.float32)
    x[:, 5] = np.log(0.999)                               # one token holds the coverage: count = 1 < k
    codec = codec_from_spec("log_probs", {"name": "topk", "num_classes": v, "k": k, "coverage": 0.99,
                                          "tail": tail})
    codec = codec.fit(x) if codec.fit_required else codec
    enc = codec.encode(x)
    assert (np.asarray(enc["/count"]) == 1).all()
    blank = np.zeros(len(x), dtype=np.int64)
    got = codec.gather(enc, blank)
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got, codec.decode(enc)[:, 0])
