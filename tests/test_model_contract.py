"""The contract every registered model type keeps (models/interface.py): shapes, output lengths ceil(T / s), hidden
states per layer, outputs independent of padding and batch-mates, save and reload through a checkpoint, and the
export a type offers. A new type joins by adding its tiny config to TYPES. A type that reads waveforms (`hf`) is fed
samples whose 25 ms / 10 ms feature frames are the frame counts the others are fed, with those counts as
`num_frames`."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from offline_kd.config import ModelConfig
from offline_kd.errors import OfflineKDError
from offline_kd.models.checkpoint import model_from_checkpoint, save_checkpoint
from offline_kd.models.interface import build_from_description, build_model, model_types, reads_waveform

TYPES = {
    "bilstm": dict(type="bilstm", input_dim=8, hidden_dim=6, num_layers=3, num_classes=5, dropout=0.0),
    "conformer": dict(type="conformer", input_dim=8, hidden_dim=16, num_layers=3, num_classes=5, dropout=0.0,
                      subsampling=4, num_heads=2, conv_kernel=5, subsampling_channels=4),
    "hf": dict(type="hf", input_dim=8, hidden_dim=16, num_layers=3, num_classes=5, dropout=0.0, num_heads=2,
               hf_config={"conv_dim": [8] * 7, "num_conv_pos_embeddings": 8, "num_conv_pos_embedding_groups": 2,
                          "mask_time_prob": 0.0}),
}
if importlib.util.find_spec("transformers") is None:       # the hf extra is not installed: its type is not tested
    TYPES.pop("hf")


def run(m, x, lengths, layers=None):
    """forward_with_hidden_states on (B, T, D) features, or for a waveform model on samples whose feature frame
    counts are `lengths` (x's values seed the samples)."""
    if reads_waveform(m):
        return m.forward_with_hidden_states(*samples(x, lengths), layers, num_frames=lengths)
    return m.forward_with_hidden_states(x, lengths, layers)


def samples(x, lengths):
    """(B, N) samples and their counts: T frames of a 10 ms hop and 25 ms window are 400 + 160 (T - 1) samples (plus
    up to 159 that make no further frame)."""
    n = 400 + 160 * (lengths - 1) + 37
    g = torch.Generator().manual_seed(int(x.abs().sum() * 1000) % 2 ** 31)
    audio = 0.1 * torch.randn(x.shape[0], int(n.max()), generator=g)
    return audio * (torch.arange(audio.shape[1])[None, :] < n[:, None]), n


def test_every_registered_type_is_covered():
    optional = set() if importlib.util.find_spec("transformers") else {"hf"}     # (the hf extra's type)
    assert sorted(TYPES) == [t for t in model_types() if t not in optional]


def _model(kind, **kw):
    torch.manual_seed(0)
    return build_model(ModelConfig(**{**TYPES[kind], **kw})).eval()


@pytest.mark.parametrize("kind", sorted(TYPES))
def test_shapes_lengths_and_hidden_states(kind):
    m = _model(kind)
    s, x, lengths = m.subsampling, torch.randn(3, 23, 8), torch.tensor([23, 17, 5])
    lp, out_len, hidden = run(m, x, lengths, [1, m.num_layers])
    assert out_len.tolist() == [(int(n) + s - 1) // s for n in lengths]
    assert lp.shape == (int(out_len.max()), 3, 5)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(lp.shape[:2]))
    assert set(hidden) == {1, m.num_layers} and set(m.layer_dims()) == set(range(1, m.num_layers + 1))
    for L, h in hidden.items():
        assert h.shape == (3, lp.shape[0], m.layer_dims()[L])
    lp2, out2, _ = run(m, x, lengths)
    torch.testing.assert_close(lp, lp2)
    assert m.blank == 0 and m.input_dim == 8 and m.num_classes == 5
    with pytest.raises(ValueError, match="out of range"):
        run(m, x, lengths, [m.num_layers + 1])


@pytest.mark.parametrize("kind", sorted(TYPES))
def test_an_utterance_gives_the_same_outputs_alone_and_batched(kind):
    m = _model(kind)
    if reads_waveform(m):
        (audio, n), t = samples(torch.ones(1, 1, 1), torch.tensor([13])), torch.tensor([13])
        lp_alone, n_alone, h_alone = m.forward_with_hidden_states(audio, n, [2], num_frames=t)
        padded = torch.cat([audio, 5 * torch.randn(1, 1500)], 1)                  # garbage in the padding
        others, m_others = samples(torch.ones(2, 1, 1) * 2, torch.tensor([21, 17]))
        batch = torch.zeros(3, max(padded.shape[1], others.shape[1]))
        batch[0, :others.shape[1]], batch[1, :padded.shape[1]], batch[2, :others.shape[1]] = others[0], padded[0], others[1]
        lp_b, n_b, h_b = m.forward_with_hidden_states(batch, torch.tensor([int(m_others[0]), int(n[0]), int(m_others[1])]),
                                                      [2], num_frames=torch.tensor([21, 13, 17]))
    else:
        x = torch.randn(1, 13, 8)
        lp_alone, n_alone, h_alone = m.forward_with_hidden_states(x, torch.tensor([13]), [2])
        padded = torch.cat([x, 5 * torch.randn(1, 8, 8)], 1)                 # garbage in the padding
        batch = torch.cat([torch.randn(1, 21, 8), padded, torch.randn(1, 21, 8)], 0)
        lp_b, n_b, h_b = m.forward_with_hidden_states(batch, torch.tensor([21, 13, 17]), [2])
    t = int(n_alone[0])
    assert int(n_b[1]) == t
    torch.testing.assert_close(lp_b[:t, 1], lp_alone[:, 0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(h_b[2][1, :t], h_alone[2][0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", sorted(TYPES))
def test_a_checkpoint_rebuilds_it(kind, tmp_path):
    from offline_kd.data.vocab import Vocabulary
    m = _model(kind)
    vocab = Vocabulary(["<blank>", "a", "b", "c", "|"], "char", "|")
    save_checkpoint(tmp_path / "m.pt", {"model_type": m.model_type, "model_config": m.describe(),
                                         "model_state_dict": m.state_dict(), "vocab": vocab.to_dict()})
    back, _, _ = model_from_checkpoint(tmp_path / "m.pt")
    x, lengths = torch.randn(2, 11, 8), torch.tensor([11, 9])
    assert type(back) is type(m) and back.describe() == m.describe()
    torch.testing.assert_close(run(back.eval(), x, lengths)[0], run(m, x, lengths)[0])


@pytest.mark.parametrize("kind", sorted(TYPES))
def test_it_traces_for_export(kind):
    m = _model(kind)
    graph = m.exportable().eval()
    if reads_waveform(m):       # samples; a group-norm encoder's graph takes one utterance at a time
        one = getattr(graph, "one_at_a_time", False)
        x, lengths = 0.1 * torch.randn(1 if one else 2, 6000), torch.tensor([6000] if one else [6000, 4000])
        x2, l2 = (0.1 * torch.randn(1, 9000), torch.tensor([9000])) if one else (
            0.1 * torch.randn(3, 9000), torch.tensor([9000, 7000, 3000]))
    else:
        x, lengths = torch.randn(2, 19, 8), torch.tensor([19, 12])
        x2, l2 = torch.randn(3, 27, 8), torch.tensor([27, 20, 9])     # other shapes than the trace's
    traced = torch.jit.trace(graph, (x, lengths), check_trace=False)
    lp, n = traced(x2, l2)
    want, n_want = m(x2, l2)
    assert n.tolist() == n_want.tolist()
    for b, k in enumerate(n.tolist()):
        torch.testing.assert_close(lp[b, :k], want[:k, b], atol=1e-4, rtol=1e-4)


@pytest.mark.skipif("hf" not in TYPES, reason="the hf extra (transformers) is not installed")
def test_a_description_that_does_not_build_is_one_line_naming_where():
    bad = {k: v for k, v in TYPES["hf"].items() if k != "type"} | {"hf_config": {"conv_dim": "abc"}}
    with pytest.raises(OfflineKDError, match=r"^m\.pt: model_config does not build a hf model \(\w+") as e:
        build_from_description("hf", bad, "m.pt: model_config")
    assert "\n" not in str(e.value)


def test_settings_of_another_type_are_refused_with_the_allowed_keys():
    with pytest.raises(OfflineKDError, match="model.num_heads is a setting of model.type conformer and hf; model.type "
                                             "bilstm takes input_dim, hidden_dim"):
        ModelConfig(type="bilstm", num_heads=4)
    with pytest.raises(OfflineKDError, match="model.type must be"):
        ModelConfig(type="transformer")
    with pytest.raises(OfflineKDError, match="subsamples by"):
        build_model(ModelConfig(**{**TYPES["conformer"], "subsampling": 5}))
    with pytest.raises(OfflineKDError, match="multiple of 2 x model.num_heads"):
        build_model(ModelConfig(**{**TYPES["conformer"], "num_heads": 3}))
