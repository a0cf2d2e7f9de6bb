"""One writer per run directory and per cache: an exclusive advisory lock (`fcntl.flock`) held while a command
writes there. The kernel drops it when the process ends, however it ends, so a killed run never leaves a stale
lock; the lock file only names the holder, for the message a second writer gets.

Ranks of one torchrun job write together: only rank 0 takes the lock. Caches at an fsspec URL (s3://, ...) cannot
be locked this way and are not.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import os
import sys
from pathlib import Path

from offline_kd.errors import OfflineKDError


class WriterLock:
    """`with WriterLock(path_of_lock_file, "run directory runs/x"):` refuses a second writer with a clear message."""

    def __init__(self, lock_file: str | Path, what: str, hint: str):
        self.path, self.what, self.hint = Path(lock_file), what, hint
        self._fh = None

    def __enter__(self) -> "WriterLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise OfflineKDError(f"{self.what} is in use by {holder}; {self.hint}") from None
        fh.seek(0)
        fh.truncate()
        started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        fh.write(f"offline-kd pid {os.getpid()} ({Path(sys.argv[0]).name} {' '.join(sys.argv[1:3])}), "
                 f"started {started}")
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            try:
                self.path.unlink(missing_ok=True)
            finally:
                fcntl.flock(self._fh, fcntl.LOCK_UN)
                self._fh.close()
                self._fh = None


class NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def run_dir_lock(out: Path, is_main: bool):
    return WriterLock(out / ".lock", f"run directory {out}",
                      "wait for that run to finish, or choose another train.output_dir") if is_main else NoLock()


def cache_lock(output: str, is_main: bool):
    if not is_main or "://" in output:
        return NoLock()
    p = Path(output)
    return WriterLock(p.with_name(p.name + ".lock"), f"cache {output}",
                      "wait for that dump to finish, or choose another dump.output")
