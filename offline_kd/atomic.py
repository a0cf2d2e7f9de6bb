"""A directory that appears whole or not at all: written under a work name beside it, renamed into place."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path


@contextlib.contextmanager
def atomic_directory(out: Path, work: Path):
    """Yield `work` (made empty) to write into; on success it becomes `out` (which must be absent or an empty
    directory) in one rename, on any error or interrupt it is removed and `out` is left as it was."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        yield work
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            out.rmdir()
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
