"""The field table (cache/fields.py): every per-frame array path comes from it, and its encode / decode on the host
and on a torch device equal the codecs' own, field by field."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from offline_kd.cache.codecs import codec_from_spec
from offline_kd.cache.fields import FieldTable, hidden_field, is_field_name
from offline_kd.errors import OfflineKDError


def _table():
    rng = np.random.default_rng(7)
    sample = torch.log_softmax(torch.from_numpy(rng.normal(size=(64, 9))), -1).float().numpy()
    lp = codec_from_spec("log_probs", {"name": "lowrank", "num_classes": 9, "rank": 4, "coeff": "int8"}).fit(sample)
    hidden = {3: codec_from_spec("hidden", {"name": "lowrank", "dim": 4, "rank": 3, "coeff": "int8"})
              .fit(rng.normal(size=(64, 4)).astype(np.float32)),
              1: codec_from_spec("hidden", {"name": "float16", "dim": 5})}        # fitted state on 2 of 3 fields
    return FieldTable(lp, hidden), lp, hidden


def _outputs(frames=7, seed=0):
    rng = np.random.default_rng(seed)
    lp = torch.log_softmax(torch.from_numpy(rng.normal(size=(frames, 9))), -1).float().numpy()
    hidden = {1: rng.normal(size=(frames, 5)).astype(np.float32), 3: rng.normal(size=(frames, 4)).astype(np.float32)}
    return lp, lp.argmax(-1), hidden


def test_paths_are_the_field_names_and_their_codecs_suffixes():
    table, lp, hidden = _table()
    want = [("best_path", (), "int32", False)]
    want += [("log_probs" + a.suffix, a.shape, a.dtype, a.transpose) for a in lp.arrays()]
    for L in (1, 3):                                   # sorted by layer, whatever the dict order
        want += [(f"hidden_{L}" + a.suffix, a.shape, a.dtype, a.transpose) for a in hidden[L].arrays()]
    assert table.arrays() == want and table.paths() == [p for p, *_ in want]
    assert hidden_field(3) == "hidden_3" and [f.layer for f in table.fields] == [None, None, 1, 3]
    assert table.field_of("log_probs/indices").name == "log_probs" and table.field_of("hidden_3").layer == 3
    assert table.field_of("hidden_31") is None and table.field_of("offset") is None
    assert is_field_name("hidden_12") and is_field_name("best_path") and not is_field_name("hidden_x")
    assert not is_field_name("lm_nbest_offset")


def test_encode_and_decode_equal_each_codec_s_own():
    table, lp_codec, hidden = _table()
    lp, best, hid = _outputs()
    enc = table.encode(lp, best, hid)
    assert sorted(enc) == sorted(table.paths()) and enc["best_path"].dtype == np.int32
    for suffix, arr in lp_codec.encode(lp).items():
        np.testing.assert_array_equal(enc["log_probs" + suffix], arr)
    for L, codec in hidden.items():
        for suffix, arr in codec.encode(hid[L]).items():
            np.testing.assert_array_equal(enc[f"hidden_{L}" + suffix], arr)
    dec = table.decode(enc)
    np.testing.assert_array_equal(dec["log_probs"], lp_codec.decode(lp_codec.encode(lp)))
    np.testing.assert_array_equal(dec["best_path"], best)
    for L, codec in hidden.items():
        np.testing.assert_array_equal(dec["hidden"][L], codec.decode(codec.encode(hid[L])))
    assert sorted(table.decode(enc, layers={3})["hidden"]) == [3]
    assert table.decode(enc, layers=set())["hidden"] == {}
    kept = table.select(enc, layers={1})
    assert not any(p.startswith("hidden_3") for p in kept) and any(p.startswith("hidden_1") for p in kept)
    assert "best_path" in kept and any(p.startswith("log_probs") for p in kept)
    assert table.select(enc) == enc


def test_the_device_path_equals_the_host_path():
    table, _, _ = _table()
    lp, best, hid = _outputs(seed=1)
    states = table.device_states(torch.device("cpu"))
    assert sorted(states) == ["hidden_1", "hidden_3", "log_probs"]
    codes = table.encode_torch(torch.from_numpy(lp), {L: torch.from_numpy(h) for L, h in hid.items()}, states)
    host = table.encode(lp, best, hid)
    assert sorted(codes) == sorted(host)
    np.testing.assert_array_equal(codes["best_path"].numpy(), best)
    lp_dev, hid_dev = table.decode_torch({p: torch.from_numpy(np.asarray(a)) for p, a in host.items()}, states)
    dec = table.decode(host)
    np.testing.assert_allclose(lp_dev.numpy(), dec["log_probs"], rtol=1e-5, atol=1e-5)
    for L in (1, 3):
        np.testing.assert_allclose(hid_dev[L].numpy(), dec["hidden"][L], rtol=1e-5, atol=1e-5)
    only = table.select(host, layers={3})
    assert sorted(table.decode_torch({p: torch.from_numpy(np.asarray(a)) for p, a in only.items()}, states)[1]) == [3]


def test_a_registered_frame_field_is_computed_stored_and_decoded_on_the_host_and_the_device():
    import pytest
    from offline_kd.cache.fields import FRAME_FIELDS, FrameField, frame_field_specs, register_field
    from offline_kd.errors import OfflineKDError
    top = FrameField("top_test", lambda lp: np.stack([lp.max(-1), lp.min(-1)], -1), "float16", (2,))
    register_field(top)
    try:
        for bad in ("best_path", "hidden_3", "_x", "a-b", "offset"):
            with pytest.raises(ValueError, match="not a free field name"):
                register_field(FrameField(bad, np.abs))
        with pytest.raises(OfflineKDError, match="dump.fields: 'nope' is not a registered per-frame field"):
            frame_field_specs(["top_test", "nope"])
        specs = frame_field_specs(["top_test"])
        assert specs == [{"name": "top_test", "dtype": "float16", "shape": [2]}]
        base, lp_codec, hidden = _table()
        table = FieldTable(lp_codec, hidden, specs)
        assert table.arrays() == base.arrays() + [("top_test", (2,), "float16", False)]
        assert table.select({"top_test": 1, "hidden_1": 2, "hidden_3": 3}, layers=[1]) == {"top_test": 1, "hidden_1": 2}
        lp, best, hid = _outputs()
        enc = table.encode(lp, best, hid)
        want = np.stack([lp.max(-1), lp.min(-1)], -1).astype(np.float16)
        assert enc["top_test"].dtype == np.float16 and np.array_equal(enc["top_test"], want)
        assert np.array_equal(table.decode(enc)["top_test"], want)
        states = table.device_states("cpu")
        codes = table.encode_torch(torch.from_numpy(lp), {L: torch.from_numpy(h) for L, h in hid.items()}, states)
        assert np.array_equal(codes["top_test"].numpy(), want)
        del FRAME_FIELDS["top_test"]                  # a process that did not register it can still read it
        assert np.array_equal(table.decode(enc)["top_test"], want)
        with pytest.raises(OfflineKDError, match="cache field 'top_test': no function computes it"):
            table.encode(lp, best, hid)
    finally:
        FRAME_FIELDS.pop("top_test", None)


def test_a_field_the_teacher_provides_is_stored_as_given_on_the_host_and_the_device():
    """An ensemble's member_probs comes beside the hidden states, not from a registered function (one listed after
    it is still computed); without it the encode is an error, not a silent zero."""
    from offline_kd.cache.fields import FRAME_FIELDS, FrameField, register_field
    _, lp_codec, hidden_codecs = _table()
    member = {"name": "member_probs", "dtype": "float16", "shape": [3]}
    register_field(FrameField("peak_test", lambda lp: lp.max(-1), "float32"))
    try:
        fields = FieldTable(lp_codec, hidden_codecs, [member, {"name": "peak_test", "dtype": "float32", "shape": []}])
        lp, best, hidden = _outputs()
        given = np.random.default_rng(1).random((len(lp), 3)).astype(np.float32)
        enc = fields.encode(lp, best, {**hidden, "member_probs": given})
        np.testing.assert_array_equal(enc["peak_test"], lp.max(-1))
        assert enc["member_probs"].dtype == np.float16
        np.testing.assert_array_equal(enc["member_probs"], given.astype(np.float16))
        assert fields.decode(enc)["member_probs"] is enc["member_probs"]
        codes = fields.encode_torch(torch.from_numpy(lp), {**{L: torch.from_numpy(h) for L, h in hidden.items()},
                                                            "member_probs": torch.from_numpy(given)},
                                    fields.device_states(torch.device("cpu")))
        for k in ("member_probs", "peak_test"):
            np.testing.assert_array_equal(codes[k].numpy(), enc[k])
    finally:
        FRAME_FIELDS.pop("peak_test")
    with pytest.raises(OfflineKDError, match="member_probs': the teacher gave no values"):
        FieldTable(lp_codec, hidden_codecs, [member]).encode(lp, best, hidden)
