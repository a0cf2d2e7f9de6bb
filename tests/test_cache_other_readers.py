"""#13 item 9: a cache is plain Zarr v3 that another implementation reads bit for bit (tensorstore), and caches of
format 1 (ids and hashes as zarr-python `string` arrays) still read."""

import numpy as np
import pytest
import zarr

from helpers import CODECS, QUIET, dump_cfg
from offline_kd.cache.layout import META_KEY
from offline_kd.cache.reader import TeacherCache
from offline_kd.commands import dump_teacher, train_student
from offline_kd.config import ExperimentConfig, build_dataclass


def _arrays(path):
    root = zarr.open_group(str(path), mode="r")
    return {name: a for name, a in root.members(max_depth=None) if isinstance(a, zarr.Array)}


@pytest.mark.parametrize("codec", list(CODECS))
def test_tensorstore_reads_every_array_as_zarr_python_does(codec, tiny_teacher, tiny_corpus, tmp_path):
    ts = pytest.importorskip("tensorstore", reason="tensorstore not installed (pip install -e '.[test]')")
    out = tmp_path / "c.zarr"
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, out, codecs=CODECS[codec]), **QUIET)
    arrays = _arrays(out)
    assert {"train/utterance_id", "train/feature_sha256", "train/checksum", "dev/best_path"} <= set(arrays)
    for name, a in arrays.items():
        t = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(out / name)}}).result()
        got = t.read().result()
        want = a[...]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)
    ids = arrays["train/utterance_id"][...]
    split = TeacherCache(str(out)).split("train")
    assert [bytes(r).rstrip(b"\0").decode() for r in ids] == split.utterance_ids


def test_a_format_1_cache_still_reads(f32_cache, tiny_corpus, tmp_path):
    """Rewrite a cache's ids and hashes the way format 1 stored them (vlen strings) and read it back."""
    import shutil
    from helpers import student_dict
    old = tmp_path / "v1.zarr"
    shutil.copytree(f32_cache, old)
    new = TeacherCache(str(f32_cache)).split("train")
    g = zarr.open_group(str(old / "train"), mode="r+")
    for key, values in (("utterance_id", new.utterance_ids), ("feature_sha256", new.feature_hashes)):
        a = g.create_array(key, shape=(len(values),), dtype=str, overwrite=True)
        a[:] = np.asarray(values, dtype=object)
    root = zarr.open_group(str(old), mode="r+")
    meta = {**root.attrs[META_KEY], "format_version": 1}
    root.attrs[META_KEY] = meta
    from offline_kd.cache import integrity
    from offline_kd.cache.layout import field_arrays
    c = TeacherCache(str(f32_cache))
    root.attrs[integrity.INTEGRITY_KEY] = integrity.seal(
        root, meta, c.splits, [p for p, *_ in field_arrays(c.lp_codec, c.hidden_codecs)])   # sealed as v1 was
    split = TeacherCache(str(old)).split("train")
    assert split.utterance_ids == new.utterance_ids and split.feature_hashes == new.feature_hashes
    cfg = build_dataclass(ExperimentConfig, student_dict(tiny_corpus, old, tmp_path / "s", epochs=1))
    train_student.run(cfg, **QUIET)        # joins the corpus by these ids and hashes
