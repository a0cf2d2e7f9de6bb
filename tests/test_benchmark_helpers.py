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
