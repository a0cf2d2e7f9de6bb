"""Helpers shared by the benchmark scripts: medians, timing, and writing a section of docs/benchmarks.md."""

from __future__ import annotations

import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def machine() -> str:
    import os
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
            f"({'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU'}), "
            f"{torch.get_num_threads()} torch threads")


def median(xs):
    return statistics.median(xs)


class Timer:
    def __enter__(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.t = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.t


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section between <!-- BEGIN name --> and <!-- END name --> in docs/benchmarks.md."""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\nEvery figure below is written by the script named in its section.\n"
    block = f"<!-- BEGIN {name} -->\n{body.rstrip()}\n<!-- END {name} -->"
    pattern = re.compile(rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)
    print(body)


def command_line() -> str:
    import shlex
    return "python " + " ".join([str(Path(sys.argv[0]).as_posix())] + [shlex.quote(a) for a in sys.argv[1:]])
