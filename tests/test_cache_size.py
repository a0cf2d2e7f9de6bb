"""Each codec's cache takes at most the bytes its codec states per frame (docs/cache-format.md, "stored arrays (per
frame)"): the per-frame objects on disk, summed, against frames x the declared per-frame bytes, plus a small
allowance per stored object for the compressor's framing."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import CODECS, dump_cfg, QUIET
from offline_kd.cache.layout import field_arrays
from offline_kd.cache.reader import TeacherCache
from offline_kd.commands import dump_teacher

FRAMING = 64     # bytes per stored object beyond its payload (zstd frame header, shard index entry)


@pytest.mark.parametrize("name", list(CODECS))
def test_stored_bytes_within_the_codecs_stated_bound(name, tiny_teacher, tiny_corpus, tmp_path):
    out = tmp_path / "c.zarr"
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, out, codecs=CODECS[name], splits=["dev"]), **QUIET)
    cache = TeacherCache(str(out))
    frames = cache.split("dev").num_frames
    for path, shape, dtype, _ in field_arrays(cache.lp_codec, cache.hidden_codecs):
        per_frame = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        objects = [f for f in (out / "dev" / path / "c").rglob("*") if f.is_file()]
        assert objects, path
        stored = sum(f.stat().st_size for f in objects)
        bound = frames * per_frame + FRAMING * len(objects)
        assert stored <= bound, f"{path}: {stored} bytes stored, the codec states at most {bound}"
