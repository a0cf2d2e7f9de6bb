"""Helpers shared by the benchmark scripts: medians, timing, and writing a section of docs/benchmarks.md."""

from __future__ import annotations

import datetime
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


HISTORY = "## History"
_HEADING = re.compile(r"^(#{1,6}) (.*)$")


def _shift_headings(lines: list[str], by: int) -> list[str]:
    """The lines with every Markdown heading outside code fences `by` levels deeper (negative: shallower)."""
    out, fenced = [], False
    for line in lines:
        fenced ^= line.startswith("```")
        m = None if fenced else _HEADING.match(line)
        out.append(line if m is None else "#" * min(6, max(1, len(m.group(1)) + by)) + " " + m.group(2))
    return out


def _depth(lines: list[str]) -> int | None:
    """The level of the first heading among the lines (None: no heading)."""
    return next((len(m.group(1)) for m in map(_HEADING.match, lines) if m), None)


def write_section(name: str, body: str, *, doc: Path | None = None, today: str | None = None) -> None:
    """Write the section `name` of docs/benchmarks.md, the text between <!-- BEGIN name --> and <!-- END name -->.

    The name is the section's stable key (a script's `--section`). A rerun replaces the section in place, at the
    heading level it has there (a section nested as `###` stays nested), and moves the figures it replaces to the end
    of `## History` (the file's last section) as `### <their heading> (until <today>)`; identical text changes
    nothing. A new name's section goes just before `## History`. Issue numbers such as " (#31)" are dropped from the
    current sections' headings.
    """
    doc = DOC if doc is None else doc
    today = today or datetime.date.today().isoformat()
    doc.parent.mkdir(parents=True, exist_ok=True)
    text = doc.read_text() if doc.exists() else "# Benchmarks\n\nEvery figure below is written by the script named in its section.\n"
    lines = [re.sub(r" \(#\d+\)", "", line) if _HEADING.match(line) else line for line in body.strip("\n").splitlines()]
    found = re.search(rf"<!-- BEGIN {re.escape(name)} -->\n(.*?)\n?<!-- END {re.escape(name)} -->", text, re.S)
    if found is None:                                   # a new section: before the history, or at the end
        block = f"<!-- BEGIN {name} -->\n" + "\n".join(lines) + f"\n<!-- END {name} -->"
        at = text.find(f"\n{HISTORY}\n")
        text = (text.rstrip() + "\n\n" + block + "\n" if at < 0
                else text[:at].rstrip() + "\n\n" + block + "\n\n" + text[at + 1:])
    else:
        old = found.group(1).strip("\n").splitlines()
        if _depth(old) is not None and _depth(lines) is not None:
            lines = _shift_headings(lines, _depth(old) - _depth(lines))
        if lines != old:
            block = f"<!-- BEGIN {name} -->\n" + "\n".join(lines) + f"\n<!-- END {name} -->"
            text = text[:found.start()] + block + text[found.end():]
            i = next((k for k, line in enumerate(old) if _HEADING.match(line)), None)
            title = f"`{name}`" if i is None else _HEADING.match(old[i]).group(2)
            rest = old if i is None else _shift_headings(old[:i] + old[i + 1:], 3 - _depth(old))
            if f"\n{HISTORY}\n" not in text:
                text = text.rstrip() + f"\n\n{HISTORY}\n\nFigures a rerun replaced, each dated by the day it was replaced.\n"
            text = text.rstrip() + f"\n\n### {title} (until {today})\n\n" + "\n".join(rest).strip("\n") + "\n"
    doc.write_text(text)
    print(body)


def command_line() -> str:
    import shlex
    return "python " + " ".join([str(Path(sys.argv[0]).as_posix())] + [shlex.quote(a) for a in sys.argv[1:]])
