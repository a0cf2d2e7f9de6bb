"""Device selection without a GPU: the logic is a pure function of (name, torchrun env, CUDA availability, GPU
count), so the class of bug that made every single-GPU command fail at start-up (a bare `cuda` passed to
torch.cuda.set_device) is caught on CPU machines."""

import pytest
import torch

from offline_kd.errors import OfflineKDError
from offline_kd.runtime.distributed import DistEnv, select_device

SINGLE, RANK3 = DistEnv(), DistEnv(rank=3, world_size=4, local_rank=3)


@pytest.mark.parametrize("name,env,available,count,expected", [
    ("auto", SINGLE, True, 1, "cuda:0"),
    ("cuda", SINGLE, True, 2, "cuda:0"),
    ("cuda:1", SINGLE, True, 2, "cuda:1"),
    ("auto", RANK3, True, 4, "cuda:3"),
    ("cuda", RANK3, True, 2, "cuda:1"),        # more ranks than visible GPUs on the node: wrap around
    ("auto", SINGLE, False, 0, "cpu"),
    ("cpu", SINGLE, True, 2, "cpu"),
    ("auto", RANK3, False, 0, "cpu"),
])
def test_selection(name, env, available, count, expected):
    device = select_device(name, env, available, count)
    assert device == torch.device(expected)
    if device.type == "cuda":
        assert device.index is not None           # torch.cuda.set_device needs an index


@pytest.mark.parametrize("name,available,count,message", [
    ("cuda", False, 0, "CUDA is not available"),
    ("cuda:2", True, 2, r"only 2 GPU\(s\) visible \(cuda:0..cuda:1\)"),
    ("gpu", True, 1, "unknown device 'gpu'"),
    ("cuda", True, 0, "CUDA is not available"),            # a driver that sees no GPU
])
def test_bad_devices_are_one_line_errors(name, available, count, message):
    with pytest.raises(OfflineKDError, match=message):
        select_device(name, SINGLE, available, count)
