"""scripts/demo.sh's clean-up (#29 item 8): when the teacher step fails, the CTC-only baseline training beside it
is stopped too, its process included, not only the shell around it. The script runs from a copy in a temporary
folder (it writes beside itself) with a stand-in for `offline-kd` (OKD) whose baseline sleeps and whose teacher
fails."""

import os
import shutil
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FAKE_OKD = """#!/usr/bin/env bash
case "$1 $3" in
  "data "*) mkdir -p data/demo && touch data/demo/teacher_train.h5 data/demo/lm.arpa ;;
  "train configs/demo/baseline.yaml") echo $$ > baseline.pid; exec sleep 60 ;;
  "train configs/demo/teacher.yaml")
    for _ in $(seq 100); do [ -s baseline.pid ] && break; sleep 0.1; done
    echo "teacher: failing on purpose" >&2; exit 3 ;;
  *) echo "fake okd: unexpected $*" >&2; exit 9 ;;
esac
"""


def _running(pid: int) -> bool:
    """A live process (a zombie that nobody reaped counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_a_failing_teacher_step_stops_the_baseline_process(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "demo.sh", tmp_path / "scripts" / "demo.sh")
    okd = tmp_path / "okd"
    okd.write_text(FAKE_OKD)
    okd.chmod(0o755)
    env = {**os.environ, "OKD": str(okd), "PATH": "/usr/bin:/bin"}       # (no lmplz: the LM step is skipped)
    r = subprocess.run(["bash", str(tmp_path / "scripts" / "demo.sh")], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=60)
    pid = int((tmp_path / "baseline.pid").read_text())
    try:
        assert r.returncode == 3 and "teacher: failing on purpose" in r.stderr, r.stderr
        deadline = time.monotonic() + 5
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(pid), "the baseline's process outlived demo.sh"
    finally:
        if _running(pid):
            os.kill(pid, 9)
