"""Alignment of a teacher to the student (teachers/alignment.py): vocabulary mapping (blank anywhere, word
delimiter, case folding, special tokens, explicit file, unmappable tokens), frame-rate pooling and repetition with the
length rule, and end to end: a teacher at 20 ms cached for a 40 ms student trains the same from the cache as live,
and a teacher with its classes permuted (blank last) makes the native cache bit for bit."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from click.testing import CliRunner

from helpers import QUIET, assert_same_cache, dump_cfg, offline_and_online_steps, student_dict
from offline_kd.cache.reader import TeacherCache
from offline_kd.cli import main
from offline_kd.commands import dump_teacher
from offline_kd.config import ExperimentConfig, build_dataclass
from offline_kd.data.vocab import Vocabulary
from offline_kd.errors import OfflineKDError
from offline_kd.teachers.alignment import FLOOR, FrameAlignment, LengthMismatch, VocabularyMap

STUDENT = Vocabulary(("<blank>", "|", "a", "b", "c"), "char", "|")
HF = ["<pad>", "<s>", "</s>", "<unk>", "|", "A", "B", "C"]


def _lp(shape, seed=0):
    return torch.log_softmax(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3, -1)


# ------------------------------------------------------------------------------------------------ vocabulary
def test_hf_style_vocabulary_maps_blank_delimiter_case_and_drops_specials():
    m = VocabularyMap(HF, 0, STUDENT, "|", ("<s>", "</s>", "<unk>"))
    assert m.target == [0, None, None, None, 1, 2, 3, 4]
    assert m.counts == {"blank": 1, "same": 1, "delimiter": 0, "case_folded": 3, "explicit": 0, "dropped": 3}
    lp = _lp((5, 2, len(HF)))
    p = lp.exp()
    kept = p[..., [0, 4, 5, 6, 7]]
    want = kept / kept.sum(-1, keepdim=True)
    torch.testing.assert_close(m.apply(lp).exp(), want, rtol=1e-5, atol=1e-7)


def test_delimiter_maps_onto_another_separator_and_blank_at_the_pad_or_last():
    student = Vocabulary(("<blank>", " ", "a", "b"), "char", " ")
    m = VocabularyMap(["a", "b", "|", "<pad>"], 3, student, "|")
    assert m.target == [2, 3, 1, 0] and m.permutation and m.counts["delimiter"] == 1
    lp = _lp((4, 1, 4))
    assert torch.equal(m.apply(lp), lp[..., [3, 2, 0, 1]])          # a permutation: bit for bit


def test_the_identity_is_left_alone_and_unreached_student_classes_get_the_floor():
    assert VocabularyMap(STUDENT.tokens, 0, STUDENT).identity
    m = VocabularyMap(["<blank>", "|", "a", "b"], 0, STUDENT)
    assert m.unreached == ["c"]
    out = m.apply(_lp((3, 1, 4)))
    assert torch.allclose(out.exp().sum(-1), torch.ones(3, 1), atol=1e-6)
    assert torch.allclose(out[..., 4], torch.full((3, 1), math.log(FLOOR)), atol=1e-3)


def test_unmappable_tokens_are_named_and_a_mapping_file_resolves_them(tmp_path):
    with pytest.raises(OfflineKDError, match=r"tokens 'é', 'ß' have no counterpart") as err:
        VocabularyMap(["<blank>", "a", "é", "ß"], 0, STUDENT)
    assert "\n" not in str(err.value)
    f = tmp_path / "map.yaml"
    f.write_text("é: a\nß: null\n")
    m = VocabularyMap(["<blank>", "a", "é", "ß"], 0, STUDENT, mapping_file=str(f))
    assert m.target == [0, 2, 2, None] and m.counts["explicit"] == 1 and m.counts["dropped"] == 1
    f.write_text("é: z\n")
    with pytest.raises(OfflineKDError, match="'é' -> 'z', which is not a token of the student's"):
        VocabularyMap(["<blank>", "a", "é"], 0, STUDENT, mapping_file=str(f))
    f.write_text("- a\n")
    with pytest.raises(OfflineKDError, match="must map teacher tokens to student tokens"):
        VocabularyMap(["<blank>", "a"], 0, STUDENT, mapping_file=str(f))


# ------------------------------------------------------------------------------------------------ frames
def _path(tokens: str, blank: int = 0, v: int = 4, sure: float = 8.0) -> torch.Tensor:
    """(T, 1, V) log-probs whose greedy path is `tokens` ("_" the blank, "a".."c" classes 1..3), each frame sure of it."""
    ids = [blank if ch == "_" else "abc".index(ch) + 1 - (blank != 0) for ch in tokens]
    x = torch.zeros(len(ids), 1, v)
    x[torch.arange(len(ids)), 0, torch.tensor(ids)] = sure
    return torch.log_softmax(x + torch.randn(x.shape, generator=torch.Generator().manual_seed(1)) * 0.1, -1)


def _greedy(lp: torch.Tensor, n: int, blank: int = 0) -> str:
    best, out, prev = lp[:n, 0].argmax(-1).tolist(), "", blank
    for c in best:
        if c != blank and c != prev:
            out += "abc"[c - 1 + (blank != 0)]
        prev = c
    return out


@pytest.mark.parametrize("path, k, want", [
    ("a__b__c_", 2, "abc"),          # a spike in every group
    ("ab____", 2, "ab"),             # two spikes in one group: the second takes the next frame
    ("abc_________", 4, "abc"),      # three in one group of 4
    ("a_a___", 2, "aa"),             # a repeat keeps a blank frame between
    ("a__a", 2, "a"),                # no frame left for the repeat (2 student frames): dropped, not merged into junk
    ("aa__bb__", 2, "ab"),           # a run of one class is one emission
    ("aaaaaa_a__", 2, "aa"),         # a run filling whole groups, then a repeat in the next: a blank frame between
    ("aaaaab_a", 2, "aba"),          # a run over whole groups, then another class in the group its end reaches
])
def test_pooling_keeps_each_spike_of_the_teachers_path_where_the_student_rate_has_room(path, k, want):
    f = FrameAlignment(Fraction(2), Fraction(2 * k))
    lp = _path(path)
    n = torch.tensor([len(path)])
    out, m, _ = f.apply(lp, n, {}, -(-n // k))
    assert _greedy(out, int(m[0])) == want
    assert all(any(torch.equal(o, lp[t, 0]) for t in range(len(path))) for o in out[:, 0])     # teacher frames, whole


def test_pooling_takes_each_emissions_most_confident_frame_and_each_other_groups_most_blank_one():
    f = FrameAlignment(Fraction(2), Fraction(4))          # teacher at 2 feature frames, student at 4: pool 2
    lp = _path("_aa___b_")
    lp[2, 0] = torch.log_softmax(torch.tensor([0.0, 9.0, 0.0, 0.0]), -1)       # the run's surest frame
    lp[4, 0] = torch.log_softmax(torch.tensor([3.0, 0.0, 0.0, 0.0]), -1)       # a less blank frame than 5
    out, _, _ = f.apply(lp, torch.tensor([8]), {}, torch.tensor([4]))
    assert torch.equal(out[0, 0], lp[2, 0]) and torch.equal(out[2, 0], lp[5, 0]) and torch.equal(out[3, 0], lp[6, 0])
    # emission a (frames 1-2) is in group 0; group 1 (frames 2-3) has no emission of its own: its most blank frame
    assert torch.equal(out[1, 0], lp[3, 0])
    blank_last = FrameAlignment(Fraction(2), Fraction(4))                     # a teacher whose blank is its last class
    lp3 = _path("a_b_", blank=3)
    out, _, _ = blank_last.apply(lp3, torch.tensor([4]), {}, torch.tensor([2]), blank=3)
    assert _greedy(out, 2, blank=3) == "ab"


def test_pooling_over_a_batch_the_partial_last_group_and_the_hidden_states():
    f = FrameAlignment(Fraction(2), Fraction(4))
    lp, h = torch.cat([_path("a_b_c"), torch.cat([_path("_b_"), _lp((2, 1, 4))])], 1), torch.randn(2, 5, 4)
    lengths = torch.tensor([5, 3])
    out, n, hid = f.apply(lp, lengths, {1: h}, torch.tensor([3, 2]))
    assert out.shape == (3, 2, 4) and n.tolist() == [3, 2]
    alone, _, _ = f.apply(lp[:3, 1:], lengths[1:], {}, torch.tensor([2]))
    assert torch.equal(out[:2, 1], alone[:, 0])                            # the same with or without a longer batch-mate
    assert torch.equal(out[2, 0], lp[4, 0]) and _greedy(out, 3) == "abc"  # the partial group: its one frame
    torch.testing.assert_close(hid[1][0, 1], (h[0, 2] + h[0, 3]) / 2)
    stacked = FrameAlignment(Fraction(2), Fraction(4), hidden="stack")
    _, _, hs = stacked.apply(lp, lengths, {1: h}, torch.tensor([3, 2]))
    assert hs[1].shape == (2, 3, 8) and stacked.width(4) == 8
    torch.testing.assert_close(hs[1][0, 2], torch.cat([h[0, 4], h[0, 4]]))     # past the end: the last repeats


def test_repetition_and_the_length_rule():
    f = FrameAlignment(Fraction(4), Fraction(2))          # teacher at 40 ms, student at 20: each frame twice
    lp = _lp((3, 1, 3))
    out, n, _ = f.apply(lp, torch.tensor([3]), {}, torch.tensor([7]))    # 6 frames, one more wanted: the last repeats
    assert n.tolist() == [7] and torch.equal(out[:, 0], lp[[0, 0, 1, 1, 2, 2, 2], 0])
    out, _, _ = f.apply(lp, torch.tensor([3]), {}, torch.tensor([5]))    # one frame too many: dropped at the end
    assert torch.equal(out[:, 0], lp[[0, 0, 1, 1, 2], 0])
    same = FrameAlignment(Fraction(2), Fraction(2))     # one frame short at the same rate: the last one repeats
    out, _, _ = same.apply(lp, torch.tensor([3]), {}, torch.tensor([4]))
    assert torch.equal(out[:, 0], lp[[0, 1, 2, 2], 0])
    with pytest.raises(LengthMismatch, match="gives 6 frames .* where the student has 9, more than max_length_mismatch 2"):
        f.apply(lp, torch.tensor([3]), {}, torch.tensor([9]))


@pytest.mark.parametrize("teacher, student", [(2, 3), (3, 2), (4, 6)])
def test_a_ratio_that_is_not_an_integer_or_its_inverse_is_an_error(teacher, student):
    with pytest.raises(OfflineKDError, match="must be an integer multiple or an integer fraction"):
        FrameAlignment(Fraction(teacher), Fraction(student))


# ------------------------------------------------------------------------------------------------ end to end
def test_a_20ms_teacher_for_a_40ms_student_from_the_cache_and_live(tiny_teacher, tiny_corpus, tmp_path):
    out = tmp_path / "s4.zarr"
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, out, splits=["train"], subsampling=4,
                                      skip_invalid=True), **QUIET)
    meta = TeacherCache(str(out)).meta
    assert meta.subsampling == 4 and meta.teacher["alignment"]["frames"]["pool"] == 2
    info = CliRunner().invoke(main, ["cache", "info", str(out)])
    assert "frame alignment: teacher frame shift 2, student 4 feature frames: posteriors each emission of the " \
        "teacher's 1-best at its own frame" in " ".join(info.output.split()), info.output
    cfgs = []
    for name in ("off", "on"):
        d = student_dict(tiny_corpus, out, tmp_path / name, epochs=1)
        d["model"]["subsampling"] = 4
        d["data"]["skip_invalid"] = True      # at 40 ms a few transcripts no longer fit their frames
        cfgs.append(build_dataclass(ExperimentConfig, d))
    a, b = offline_and_online_steps(*cfgs, tiny_teacher)
    assert len(a) == len(b) > 3
    for x, y in zip(a, b):
        for k in ("train/soft", "train/ctc", "train/feature", "train/total"):
            assert x[k] == pytest.approx(y[k], rel=1e-4, abs=1e-6), (x["step"], k)
    with pytest.raises(OfflineKDError, match="subsampling"):      # a 20 ms student cannot use the 40 ms cache
        from offline_kd.commands import train_student
        train_student.run(build_dataclass(ExperimentConfig, student_dict(tiny_corpus, out, tmp_path / "x")), **QUIET)


def test_a_permuted_teacher_makes_the_native_cache_bit_for_bit(tiny_teacher, tiny_corpus, tmp_path, monkeypatch):
    (tmp_path / "permuted_teacher.py").write_text('''
import torch
from offline_kd.models.checkpoint import model_from_checkpoint


class Permuted(torch.nn.Module):
    """The checkpoint's model with its classes rotated: the blank last."""
    def __init__(self, checkpoint):
        super().__init__()
        self.m, vocab, _ = model_from_checkpoint(checkpoint)
        self.perm = list(range(1, len(vocab.tokens))) + [0]
        self.tokens = [vocab.tokens[i] for i in self.perm]
        self.blank, self.input_dim, self.subsampling = len(self.perm) - 1, self.m.input_dim, self.m.subsampling

    def layer_dims(self):
        return self.m.layer_dims()

    def forward_with_hidden_states(self, x, lengths, layers):
        lp, n, h = self.m.forward_with_hidden_states(x, lengths, layers)
        return lp[..., self.perm], n, h


def load(checkpoint):
    return Permuted(checkpoint)
''')
    monkeypatch.syspath_prepend(str(tmp_path))
    native, permuted = tmp_path / "native.zarr", tmp_path / "permuted.zarr"
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, native), **QUIET)
    spec = {"entry_point": "permuted_teacher:load", "args": {"checkpoint": str(tiny_teacher)}}
    dump_teacher.run(dump_cfg(spec, tiny_corpus, permuted), **QUIET)
    assert_same_cache(native, permuted)
    assert TeacherCache(str(permuted)).meta.teacher["alignment"]["vocabulary"]["kind"] == "permutation"


def test_a_teacher_that_gives_no_frame_is_named_too_short():
    f = FrameAlignment(Fraction(2), Fraction(2), max_length_mismatch=2)
    with pytest.raises(LengthMismatch, match="gives 0 frames .* where the student has 1, the utterance is too short"):
        f.check(torch.tensor([5, 0]), torch.tensor([5, 1]))


def test_the_merged_map_floors_only_the_unreached_classes():
    m = VocabularyMap(["<blank>", "|", "a", "b", "x"], 0, STUDENT, mapping_file=None, special=("x",))
    lp = torch.log_softmax(torch.tensor([[0.0, -90.0, -120.0, -20.0, -1.0]]), -1)
    out = m.apply(lp)
    kept = torch.log_softmax(torch.tensor([[0.0, -90.0, -120.0, -20.0]], dtype=torch.float64), -1)
    assert out.dtype == lp.dtype and m.unreached == ["c"]
    torch.testing.assert_close(out[0, :4].double(), kept[0] - math.log1p(FLOOR), rtol=0, atol=1e-4)
    assert out[0, 4].item() == pytest.approx(math.log(FLOOR) - math.log1p(FLOOR))


@pytest.mark.parametrize("value, expect", [
    ({"huggingface": "d", "vocabulary_map": 5}, "vocabulary_map must be a file path"),
    ({"huggingface": "d", "max_length_mismatch": True}, "max_length_mismatch must be an integer >= 0"),
    ({"huggingface": "d", "hidden_pooling": "max"}, "hidden_pooling must be mean or stack"),
    ({"huggingface": "d", "checkpoint": "c"}, "names one of checkpoint, entry_point, huggingface (got checkpoint, "),
    ({"huggingface": "d", "args": {}}, "only an entry_point takes args"),
])
def test_teacher_options_are_checked_on_one_line(value, expect):
    from offline_kd.teachers.source import parse_teacher
    with pytest.raises(OfflineKDError) as err:
        parse_teacher(value)
    assert expect in str(err.value) and "\n" not in str(err.value)
