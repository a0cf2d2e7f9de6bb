"""The cache layout's small encodings (format 2): ids and hashes as uint8 arrays, and the format check."""

import hashlib
import zlib

import numpy as np
import pytest
import zarr

from offline_kd.cache.layout import (META_KEY, decode_hashes, decode_ids, encode_hashes, encode_ids, read_meta,
                                     utterance_checksum)
from offline_kd.errors import OfflineKDError


def test_ids_round_trip_as_zero_padded_utf8():
    ids = ["a", "train-000042-spk003", "é-ü", "", "ends-with-XX"]
    enc = encode_ids(ids)
    assert enc.dtype == np.uint8 and enc.shape == (5, len("train-000042-spk003"))
    assert bytes(enc[2, :5]) == "é-ü".encode() and not enc[2, 5:].any() and not enc[3].any()
    assert decode_ids(enc) == ids
    assert encode_ids([]).shape == (0, 1) and decode_ids(encode_ids([])) == []
    with pytest.raises(OfflineKDError, match="utterance id 'x\\\\x00y' contains a NUL character"):
        encode_ids(["ok", "x\0y"])
    assert decode_ids(np.array(["u1", "u2"], dtype=object)) == ["u1", "u2"]          # format 1


def test_hashes_round_trip_as_raw_digests():
    hexes = [hashlib.sha256(bytes([i])).hexdigest() for i in range(3)]
    enc = encode_hashes(hexes)
    assert enc.dtype == np.uint8 and enc.shape == (3, 32)
    assert bytes(enc[1]) == hashlib.sha256(bytes([1])).digest()
    assert decode_hashes(enc) == hexes
    assert decode_hashes(np.array(hexes, dtype=object)) == hexes                        # format 1
    assert encode_hashes([]).shape == (0, 32)


def test_read_meta_accepts_formats_1_and_2_only(tmp_path):
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    with pytest.raises(OfflineKDError, match="not an offline-kd cache"):
        read_meta(g, "g")
    for version, ok in ((1, True), (2, True), (3, False), (None, False)):
        g.attrs[META_KEY] = {"format_version": version, "x": 1}
        if ok:
            assert read_meta(g, "g")["x"] == 1
        else:
            with pytest.raises(OfflineKDError, match=f"format version {version} is not supported .*reads "
                                                     f"versions 1, 2"):
                read_meta(g, "g")


def test_utterance_checksum_covers_every_array_and_only_its_frames():
    rng = np.random.default_rng(0)
    enc = {"b": rng.integers(0, 9, (10, 3)).astype(np.int8), "a": rng.normal(size=(10,)).astype(np.float16)}
    c = utterance_checksum(enc, 2, 5)
    # the stored value is plain crc32 over the arrays' bytes in sorted path order (the format, docs/cache-format.md)
    assert c == zlib.crc32(enc["b"][2:5].tobytes(), zlib.crc32(enc["a"][2:5].tobytes()))
    assert c == utterance_checksum({k: v.copy() for k, v in enc.items()}, 2, 5)
    assert c != utterance_checksum(enc, 2, 6) and c != utterance_checksum(enc, 3, 5)
    for key in enc:
        changed = {k: v.copy() for k, v in enc.items()}
        changed[key][3] = changed[key][3] + 1
        assert utterance_checksum(changed, 2, 5) != c, key
        outside = {k: v.copy() for k, v in enc.items()}
        outside[key][7] = outside[key][7] + 1
        assert utterance_checksum(outside, 2, 5) == c, key
