import torch

from offline_kd.config import ModelConfig
from offline_kd.models.bilstm import BiLSTMCTC, count_parameters


def test_seed_hidden_state_check():
    """The seed's own check: student 4L-256H, input (8, 150, 512) -> layers 2 and 3 of shape (8, 75, 512)."""
    model = BiLSTMCTC(ModelConfig(hidden_dim=256, num_layers=4))
    x = torch.randn(8, 150, 512)
    lengths = torch.full((8,), 150)
    log_probs, out_len, hidden = model.forward_with_hidden_states(x, lengths, return_layer_indices=[2, 3])
    assert set(hidden) == {2, 3}
    assert hidden[2].shape == (8, 75, 512) and hidden[3].shape == (8, 75, 512)
    assert log_probs.shape == (75, 8, 1229)
    assert out_len.tolist() == [75] * 8
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(75, 8))


def test_forward_matches_forward_with_hidden_states_and_odd_lengths():
    torch.manual_seed(0)
    model = BiLSTMCTC(ModelConfig(input_dim=8, hidden_dim=6, num_layers=3, num_classes=5, dropout=0.0)).eval()
    x = torch.randn(2, 7, 8)
    lengths = torch.tensor([7, 5])
    lp, ol = model(x, lengths)
    lp2, ol2, hid = model.forward_with_hidden_states(x, lengths, [1, 3])
    assert ol.tolist() == [4, 3]
    torch.testing.assert_close(lp, lp2)
    assert hid[1].shape == (2, 4, 12)
    # padded frames of a hidden state are zero
    assert torch.all(hid[3][1, 3:] == 0)


def test_outputs_do_not_depend_on_padding():
    torch.manual_seed(0)
    model = BiLSTMCTC(ModelConfig(input_dim=8, hidden_dim=6, num_layers=2, num_classes=5, dropout=0.0)).eval()
    x = torch.randn(1, 5, 8)
    lp_alone, _, h_alone = model.forward_with_hidden_states(x, torch.tensor([5]), [1, 2])
    padded = torch.cat([x, torch.randn(1, 4, 8)], 1)           # garbage in the padding
    batch = torch.cat([padded, torch.randn(1, 9, 8)], 0)
    lp_b, ol, h_b = model.forward_with_hidden_states(batch, torch.tensor([5, 9]), [1, 2])
    torch.testing.assert_close(lp_b[:3, 0], lp_alone[:, 0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(h_b[2][0, :3], h_alone[2][0], atol=1e-6, rtol=1e-5)


def test_bad_layer_index_is_refused():
    model = BiLSTMCTC(ModelConfig(input_dim=4, hidden_dim=4, num_layers=2, num_classes=3))
    try:
        model.forward_with_hidden_states(torch.randn(1, 4, 4), torch.tensor([4]), [3])
    except ValueError as exc:
        assert "out of range" in str(exc)
    else:
        raise AssertionError("layer 3 of a 2-layer model must be refused")


def test_seed_geometry_parameter_counts():
    """The counts the README reports (the seed's own claims were 15.2M and 7.47M)."""
    teacher = BiLSTMCTC(ModelConfig(hidden_dim=384, num_layers=5))
    student = BiLSTMCTC(ModelConfig(hidden_dim=256, num_layers=4))
    assert count_parameters(teacher) == 17_687_885
    assert count_parameters(student) == 6_545_357
