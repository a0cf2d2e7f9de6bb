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


def test_the_label_ceiling_copies_the_first_utterances_of_a_split_with_their_true_text(tmp_path):
    import h5py
    import numpy as np
    from label_ceiling import true_text_corpus

    src = tmp_path / "corpus"
    src.mkdir()
    (src / "corpus.json").write_text('{"normalize": "lower"}')
    frames = [2, 3, 1]
    with h5py.File(src / "untranscribed.h5", "w") as h:
        h.attrs["transcribed"] = False
        h["offsets"] = np.cumsum([0, *frames])
        h["features"] = np.arange(sum(frames) * 2, dtype=np.float32).reshape(-1, 2)
        h.create_dataset("transcripts", data=np.array([b"", b"", b""], dtype=object), dtype=h5py.string_dtype())
        h.create_dataset("utterance_ids", data=np.array([b"u0", b"u1", b"u2"], dtype=object), dtype=h5py.string_dtype())
        h["nonfinite"] = np.zeros(3, dtype=np.int64)
    truth = tmp_path / "truth.jsonl"
    truth.write_text('{"id": "u0", "text": "Hello, World"}\n{"id": "u1", "text": "two"}\n')
    out = true_text_corpus(src, "untranscribed", truth, tmp_path / "out", limit=2)
    assert (out / "corpus.json").is_symlink()
    with h5py.File(out / "untranscribed.h5") as h:
        assert h.attrs["transcribed"]
        assert [t.decode() for t in h["transcripts"][...]] == ["hello world", "two"]    # normalised as imported
        assert h["offsets"][:].tolist() == [0, 2, 5] and h["features"].shape == (5, 2)
        assert h["features"][4, 1] == 9 and h["nonfinite"].shape == (2,)
    try:                                       # an utterance without text is refused, naming it
        true_text_corpus(src, "untranscribed", truth, tmp_path / "out3", limit=3)
    except SystemExit as e:
        assert "u2" in str(e)
    else:
        raise AssertionError("an utterance without text was copied")
    assert not (tmp_path / "out3" / "corpus" / "untranscribed.h5").exists()
