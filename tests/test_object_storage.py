"""Caches behind fsspec URLs: a real S3-compatible server (moto) on 127.0.0.1, started and stopped here; dump,
info, verify and train-student from s3://; and file:// URLs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import torch
import pytest
import zarr

from helpers import cache_arrays, dump_cfg, experiment_dict, QUIET
from offline_kd.cache.reader import TeacherCache
from offline_kd.config import ExperimentConfig, build_dataclass
from offline_kd.errors import OfflineKDError
from offline_kd.commands import dump_teacher, train_student

pytestmark = pytest.mark.slow   # end to end, several seconds each

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3():
    """An S3 endpoint on a free loopback port with one bucket; yields (endpoint URL, storage options)."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
    import s3fs
    s3fs.S3FileSystem(**options).mkdir("offline-kd-test")
    yield endpoint, options
    server.stop()


def _url_arrays(url: str, options: dict) -> dict:
    root = zarr.open_group(url, mode="r", storage_options=options)
    return {f"{s}/{n}": a[:] for s in ("train", "dev") for n, a in root[s].members(max_depth=None)
            if hasattr(a, "shape")}


def test_dump_verify_and_train_from_s3(s3, tiny_teacher, tiny_corpus, tmp_path):
    endpoint, options = s3
    local = tmp_path / "local.zarr"
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, local), **QUIET)
    url = "s3://offline-kd-test/caches/tiny.zarr"
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, url, storage_options=options), **QUIET)
    a, b = cache_arrays(local), _url_arrays(url, options)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)

    # the CLI on the URL, options from fsspec's and AWS's environment variables
    env = {**os.environ, **CREDS, "FSSPEC_S3_ENDPOINT_URL": endpoint}
    for args in (["cache", "info", url, "--json"], ["cache", "verify", url, "--json"]):
        res = subprocess.run([sys.executable, "-m", "offline_kd", *args], capture_output=True, text=True, env=env,
                             timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        out = json.loads(res.stdout.strip().splitlines()[-1])
        assert out["complete"] is True
        if args[1] == "verify":
            assert out["ok"] is True and out["sealed"] is True and out["problems"] == []
            assert out["utterances_checked"] == 96 + 16

    # a second dump of the same plan to the same URL finds it complete
    assert dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, url, storage_options=options),
                            **QUIET)["frames_written"] == 0

    # training from the URL is training from the same bytes: the same weights as from the local copy
    results = {}
    for name, cache, opts in (("s3", url, options), ("local", str(local), {})):
        d = experiment_dict(tiny_corpus, tmp_path / name, epochs=1)
        d["distill"] = {"cache": cache, "storage_options": opts, "alpha": 0.5, "beta": 0.3, "gamma": 0.2,
                        "temperature_schedule": [[1, 2.0]], "layer_mapping": {1: 1, 2: 3}}
        results[name] = train_student.run(build_dataclass(ExperimentConfig, d), **QUIET)
    assert results["s3"]["best_dev_wer"] == results["local"]["best_dev_wer"]
    a = torch.load(tmp_path / "s3" / "checkpoint_last.pt", weights_only=False)
    b = torch.load(tmp_path / "local" / "checkpoint_last.pt", weights_only=False)
    for k in ("model_state_dict", "extra_state_dict"):
        for n in a[k]:
            assert torch.equal(a[k][n], b[k][n]), (k, n)


def test_missing_bucket_and_missing_cache_are_one_line_errors(s3):
    _, options = s3
    with pytest.raises(OfflineKDError, match="no cache at|cannot open"):
        TeacherCache("s3://offline-kd-test/nothing-here.zarr", options)


def test_file_url_cache(tiny_teacher, tiny_corpus, tmp_path):
    url = f"file://{tmp_path}/sub/dir/c.zarr"                   # folders are created on the way
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, url, splits=["dev"]), **QUIET)
    cache = TeacherCache(url)
    assert cache.meta.complete and len(cache.split("dev")) == 16
    assert (tmp_path / "sub" / "dir" / "c.zarr" / "zarr.json").is_file()
