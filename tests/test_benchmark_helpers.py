"""The arithmetic of benchmark scripts whose figures go into the docs."""

import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from error_by_frequency import bin_of, errors_by_bin  # noqa: E402


def test_errors_are_binned_by_the_reference_word_training_count():
    counts = collections.Counter({"a": 30, "b": 3, "c": 7})
    assert [bin_of(n) for n in (0, 1, 4, 5, 19, 20)] == ["0", "1-4", "1-4", "5-19", "5-19", "20+"]
    # a substituted by x (a is frequent), b deleted (rare), c right, d (unseen) right; an insertion counts nowhere
    bins = errors_by_bin(["a b c d", "a a"], ["x c d", "a a y"], counts)
    assert bins == {"0": [1, 0], "1-4": [1, 1], "5-19": [1, 0], "20+": [3, 1]}


def test_a_rerun_replaces_its_section_in_place_and_moves_the_old_figures_to_the_history(tmp_path):
    from _common import write_section

    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Group\n\n<!-- BEGIN other -->\n### Other\n\nkept\n<!-- END other -->\n")
    write_section("speed", "## Speed (#7)\n\n| x | 1.0 |\n\n### Detail\n\nold", doc=doc, today="2026-01-01")
    write_section("speed", "## Speed (#7)\n\n| x | 2.0 |\n\n### Detail\n\nnew", doc=doc, today="2026-02-03")
    write_section("speed", "## Speed (#7)\n\n| x | 2.0 |\n\n### Detail\n\nnew", doc=doc, today="2026-02-04")
    write_section("other", "## Other\n\nrewritten", doc=doc, today="2026-02-05")
    write_section("late", "## Late\n\n3.0", doc=doc, today="2026-02-06")
    text = doc.read_text()
    current, history = text.split("\n## History\n")
    assert current.count("<!-- BEGIN speed -->") == 1 and current.count("## Speed") == 1
    assert "## Speed\n\n| x | 2.0 |\n\n### Detail\n\nnew\n<!-- END speed -->" in current   # issue number dropped
    assert "### Other\n\nrewritten\n<!-- END other -->" in current                      # still nested under Group
    assert current.index("<!-- BEGIN other -->") < current.index("<!-- BEGIN speed -->") < current.index("## Late")
    assert "1.0" not in current and "2.0" not in history and "<!--" not in history
    # the replaced figures, oldest first, headed by the day they were replaced; the unchanged rerun added nothing
    assert history.index("### Speed (until 2026-02-03)\n\n| x | 1.0 |\n\n#### Detail\n\nold") < history.index(
        "### Other (until 2026-02-05)\n\nkept")
    assert history.count("### Speed") == 1
