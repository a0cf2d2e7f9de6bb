"""The seal's rules on a hand-made group (no teacher): which caches may lack it, and what a missing one reports."""

from __future__ import annotations

import numpy as np
import zarr

from offline_kd.cache import integrity
from offline_kd.cache.layout import META_KEY


def _cache(tmp_path, version: int, ids_2d: bool, hashes_2d: bool = None):
    root = zarr.open_group(str(tmp_path / f"c{version}{ids_2d}{hashes_2d}.zarr"), mode="w")
    root.attrs[META_KEY] = {"format_version": version}
    g = root.create_group("train")
    hashes_2d = ids_2d if hashes_2d is None else hashes_2d
    ids = g.create_array("utterance_id", shape=(2, 3) if ids_2d else (2,), dtype="uint8" if ids_2d else str)
    ids[...] = np.zeros((2, 3), np.uint8) if ids_2d else np.array(["a", "b"], dtype=object)
    h = g.create_array("feature_sha256", shape=(2, 32) if hashes_2d else (2,), dtype="uint8" if hashes_2d else str)
    h[...] = np.zeros((2, 32), np.uint8) if hashes_2d else np.array(["0" * 64, "1" * 64], dtype=object)
    g.create_array("offset", shape=(3,), dtype="int64")[...] = np.array([0, 1, 2])
    return root


def test_only_a_format_1_layout_claiming_format_1_may_lack_the_seal(tmp_path):
    assert integrity.may_lack_seal(_cache(tmp_path, 1, False), ["train"])
    assert not integrity.may_lack_seal(_cache(tmp_path, 2, True), ["train"])        # format 2: always sealed
    assert not integrity.may_lack_seal(_cache(tmp_path, 2, False), ["train"])
    assert not integrity.may_lack_seal(_cache(tmp_path, 1, True), ["train"])        # edited to claim format 1
    assert not integrity.may_lack_seal(_cache(tmp_path, 1, False, True), ["train"])  # hashes stored as format 2
    assert not integrity.may_lack_seal(_cache(tmp_path, 1, False), ["train", "dev"])  # a split that is not there


def test_a_missing_seal_is_a_problem_except_for_format_1(tmp_path):
    assert integrity.check(_cache(tmp_path, 1, False), ["train"], []) == ([], False)
    assert integrity.check(_cache(tmp_path, 2, True), ["train"], []) == ([integrity.MISSING_SEAL], False)
    root = _cache(tmp_path, 2, True)                      # sealed: checked, and found intact
    root.attrs[integrity.INTEGRITY_KEY] = integrity.seal(root, dict(root.attrs[META_KEY]), ["train"], [])
    assert integrity.check(root, ["train"], []) == ([], True)
