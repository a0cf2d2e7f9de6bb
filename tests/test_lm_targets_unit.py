"""The LM N-best module on its own (no teacher): decoding a split of known log-probs, storing and reading back the
arrays. Fast, so that mutation testing of offline_kd/cache/lm_targets.py can run it per mutant."""

import numpy as np
import pytest
import zarr

from helpers import write_unigram_arpa
from offline_kd.cache.lm_targets import NBest, check_lm_targets, nbest_weights
from offline_kd.distillation.pseudo_labels import decode_split
from offline_kd.config import LMTargetsConfig
from offline_kd.data.vocab import Vocabulary
from offline_kd.decoding.beam import BeamSearchDecoder
from offline_kd.errors import OfflineKDError

VOCAB = Vocabulary(("<blank>", "a", "b", "c", "d"), "word")


class FakeSplit:
    """A cache split of given log-probs (what decode_split reads)."""

    def __init__(self, lps):
        self.lps, self.name = lps, "untranscribed"

    def __len__(self):
        return len(self.lps)

    def read_range(self, lo, hi, layers=None):
        return [{"log_probs": self.lps[i]} for i in range(lo, hi)]


def _lps(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        t = 3 + i % 5
        if i == 3:
            t = 0                                           # an empty utterance
        z = rng.normal(size=(t, 5)) * 2
        z[:, 0] += 1.0
        out.append((z - np.log(np.exp(z).sum(-1, keepdims=True))).astype(np.float32))
    return out


@pytest.fixture()
def arpa(tmp_path):
    return write_unigram_arpa(tmp_path / "lm.arpa", ["a", "b", "c", "d"], ("a", "b"))


def test_decode_split_matches_the_decoder_and_stores_consistent_arrays(arpa, tmp_path):
    n = 260                                                 # more than one read of 256 utterances
    lps = _lps(n)
    cfg = LMTargetsConfig(lm=str(arpa), splits=["untranscribed"], nbest=3, beam_width=8, alpha=0.5, beta=0.5,
                          num_processes=1)
    arrays = decode_split(FakeSplit(lps), VOCAB, cfg, log=lambda *_: None)
    off, tok, w = arrays["lm_nbest_offset"], arrays["lm_nbest_tokens"], arrays["lm_nbest_weight"]
    assert off.dtype == np.int64 and tok.dtype == np.int32 and w.dtype == np.float32
    assert off.shape == (n * 3 + 1,) and off[0] == 0 and off[-1] == len(tok) and (np.diff(off) >= 0).all()
    assert w.shape == (n, 3)
    dec = BeamSearchDecoder(list(VOCAB.tokens), "word", None, str(arpa), 0.5, 0.5, 8)
    expected = dec.decode_nbest(lps, 3)
    # stored, then read back through NBest as train-student does
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    for k, a in arrays.items():
        g.create_array(k, shape=a.shape, dtype=a.dtype, chunks=(max(1, a.shape[0]),) + a.shape[1:])
        if a.size:
            g[k][...] = a
    g.attrs["lm_nbest"] = 3
    nb = NBest(g)
    for i, beams in enumerate(expected):
        got = nb.get(i)
        assert len(got) == len(beams[:3])
        assert [t.tolist() for t, _ in got] == [VOCAB.encode(text) for text, _ in beams[:3]]
        np.testing.assert_allclose([x for _, x in got], nbest_weights([s for _, s in beams], 3)[:len(got)],
                                   rtol=1e-6)
        assert sum(x for _, x in got) == pytest.approx(1.0, abs=1e-5)
        assert all(t.dtype == np.int64 for t, _ in got)
    assert nb.get(3) == [] or [t.tolist() for t, _ in nb.get(3)] == [[]]      # the empty utterance
    assert any(len(nb.get(i)) > 1 for i in range(n))                          # several hypotheses somewhere


def test_nbest_weights_softmax_and_padding():
    w = nbest_weights([-1.0, -2.0, -4.0, -9.0], 3)
    e = np.exp([-1.0, -2.0, -4.0])
    np.testing.assert_allclose(w, e / e.sum(), rtol=1e-6)
    np.testing.assert_allclose(nbest_weights([5.0], 2), [1.0, 0.0])
    assert nbest_weights([], 1).tolist() == [0.0]
    # real beam scores are large negative numbers: the softmax must not underflow to 0 / 0
    np.testing.assert_allclose(nbest_weights([-1000.0, -1000.0 - np.log(3.0)], 2), [0.75, 0.25], rtol=1e-6)


def test_check_lm_targets_errors():
    check_lm_targets(LMTargetsConfig(lm="x", splits=["u"]), ["u", "dev"])
    with pytest.raises(OfflineKDError, match="lm_targets.lm"):
        check_lm_targets(LMTargetsConfig(lm="", splits=["u"]), ["u"])
    with pytest.raises(OfflineKDError, match="name the splits"):
        check_lm_targets(LMTargetsConfig(lm="x", splits=[]), ["u"])
    with pytest.raises(OfflineKDError, match=r"\['dev'\] not in dump.splits"):
        check_lm_targets(LMTargetsConfig(lm="x", splits=["dev"]), ["u"])


def test_decode_split_bad_lm_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.arpa"
    bad.write_text("not a model")
    cfg = LMTargetsConfig(lm=str(bad), splits=["untranscribed"], num_processes=1)
    with pytest.raises(OfflineKDError, match="dump.lm_targets"):
        decode_split(FakeSplit(_lps(2)), VOCAB, cfg, log=lambda *_: None)


def test_hybrid_loss_uses_the_weighted_ctc_of_the_nbest():
    import torch
    from offline_kd.losses.kd import weighted_ctc_loss
    from offline_kd.losses.terms import hybrid_loss
    torch.manual_seed(0)
    lp, teacher = torch.randn(10, 2, 5).log_softmax(-1), torch.randn(10, 2, 5).log_softmax(-1)
    lengths = torch.tensor([10, 8])
    labels, ll = torch.tensor([1, 2, 3, 3, 4]), torch.tensor([2, 1, 2])
    owner, w = torch.tensor([0, 1, 1]), torch.tensor([1.0, 0.3, 0.7])
    total, terms = hybrid_loss(lp, lengths, labels, ll, teacher, 1.0, 0.0, 1.0, 0.0, ctc_owner=owner, ctc_weights=w)
    expect = weighted_ctc_loss(lp, labels, lengths, ll, owner, w)
    torch.testing.assert_close(total, expect)
    torch.testing.assert_close(terms["ctc"], expect)
    assert expect.item() > 0
    # a hypothesis longer than the frames (infeasible for CTC) counts 0, not inf
    v = weighted_ctc_loss(lp[:, :1], torch.ones(12, dtype=torch.long), lengths[:1], torch.tensor([12]),
                          torch.tensor([0]), torch.tensor([1.0]))
    assert v.item() == 0.0
