"""The BiLSTM CTC model (the reference recipe's teacher and student).

    features (B, T, D) -> Linear(D, H) -> 2x subsampling (mask-aware mean of frame pairs)
      -> N x [bidirectional LSTM(H per direction) -> dropout] -> Linear(2H, V) -> log_softmax

Layer indices are 1-based as in the seed: layer k is the output of the k-th BiLSTM, shape (B, T', 2H).
Subsampling averages only valid frames (a trailing odd frame is its own mean), and LSTMs run on packed sequences,
so an utterance's outputs do not depend on how much padding its batch has.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, PackedSequence

from offline_kd.config import ModelConfig, build_dataclass
from offline_kd.data.validate import output_frames
from offline_kd.models.interface import FromConfig, count_parameters, model_size_mb, register_model

__all__ = ["BiLSTMCTC", "count_parameters", "model_size_mb", "output_lengths"]


def output_lengths(lengths: torch.Tensor, subsampling: int) -> torch.Tensor:
    return output_frames(lengths, subsampling)


#: the ModelConfig keys a BiLSTM reads (its description: what checkpoints have always recorded)
KEYS = ("input_dim", "hidden_dim", "num_layers", "num_classes", "dropout", "subsampling")


@register_model("bilstm")
class BiLSTMCTC(FromConfig, nn.Module):
    KEYS = KEYS
    """A `CTCModel` (models/interface.py): every layer's hidden states are 2H wide; the blank is class 0."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        h = config.hidden_dim
        self.input_proj = nn.Linear(config.input_dim, h)
        self.lstms = nn.ModuleList(
            nn.LSTM(h if i == 0 else 2 * h, h, batch_first=True, bidirectional=True)
            for i in range(config.num_layers))
        self.dropout = nn.Dropout(config.dropout)
        self.output_proj = nn.Linear(2 * h, config.num_classes)
        self._init_forget_bias()

    def _init_forget_bias(self) -> None:
        """Forget-gate bias 1 (gate order i, f, g, o): LSTMs keep their state early on and leave the CTC
        all-blank plateau much sooner (Jozefowicz et al., 2015)."""
        h = self.config.hidden_dim
        with torch.no_grad():
            for lstm in self.lstms:
                for name, p in lstm.named_parameters():
                    if name.startswith("bias_ih"):
                        p[h:2 * h].fill_(1.0)
                    elif name.startswith("bias_hh"):
                        p[h:2 * h].fill_(0.0)

    @classmethod
    def from_description(cls, description: dict, where: str = "model_config") -> "BiLSTMCTC":
        return cls(build_dataclass(ModelConfig, {**description, "type": "bilstm"}, where))

    # ------------------------------------------------------------------------------------------ CTCModel
    @property
    def layer_width(self) -> int:
        """Dimension of every cached/returned hidden state (2H: both directions)."""
        return 2 * self.config.hidden_dim

    hidden_size = layer_width

    def summary(self) -> str:
        return f"{self.config.num_layers} x BiLSTM({self.config.hidden_dim})"

    def subsample(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, H) -> (B, ceil(T/s), H), mean over the valid frames of each group of s."""
        s = self.config.subsampling
        out_len = output_lengths(lengths, s)
        if s == 1:
            return x, out_len
        b, t, h = x.shape
        mask = (torch.arange(t, device=x.device)[None, :] < lengths[:, None]).to(x.dtype)
        pad = (-t) % s
        if pad:
            x = nn.functional.pad(x, (0, 0, 0, pad))
            mask = nn.functional.pad(mask, (0, pad))
        x = (x * mask[..., None]).view(b, -1, s, h).sum(2)
        count = mask.view(b, -1, s).sum(2).clamp_min(1.0)
        return x / count[..., None], out_len

    def forward_with_hidden_states(self, x: torch.Tensor, lengths: torch.Tensor,
                                   return_layer_indices: Optional[Iterable[int]] = None):
        """x (B, T, D), lengths (B,) -> log_probs (T', B, V), output_lengths (B,), {layer: (B, T', 2H)}."""
        wanted = self.wanted_layers(return_layer_indices)
        y, out_len = self.subsample(self.input_proj(x), lengths)
        t_out = y.shape[1]
        packed = pack_padded_sequence(y, out_len.cpu(), batch_first=True, enforce_sorted=False)
        hidden: dict[int, torch.Tensor] = {}
        for i, lstm in enumerate(self.lstms, start=1):
            packed, _ = lstm(packed)
            if i in wanted:
                hidden[i] = pad_packed_sequence(packed, batch_first=True, total_length=t_out)[0]
            packed = PackedSequence(self.dropout(packed.data), packed.batch_sizes, packed.sorted_indices,
                                    packed.unsorted_indices)
        y = pad_packed_sequence(packed, batch_first=True, total_length=t_out)[0]
        log_probs = self.output_proj(y).log_softmax(-1).transpose(0, 1)
        return log_probs, out_len, hidden


    def exportable(self) -> nn.Module:
        """The same function as `forward`, written for tracing (ONNX, TorchScript): see `ExportableBiLSTM`."""
        return ExportableBiLSTM(self)


class ExportableBiLSTM(nn.Module):
    """`BiLSTMCTC.forward` without packed sequences, which ONNX and tracing do not carry: x (B, T, D), lengths (B,)
    -> log_probs (B, T', V), output_lengths (B,).

    Each bidirectional layer runs as two one-directional LSTMs with its weights: the forward one on the padded
    batch (padding comes after an utterance's frames, so it cannot reach them), the backward one on each utterance
    reversed within its own length (padding stays at the end). Subsampling is the same masked mean, as the ratio of
    two average pools (their common divisor cancels), so no Python branch depends on the input's shape. Outputs at
    padded frames are not defined; valid frames equal `forward`'s to float rounding (kernels differ)."""

    def __init__(self, model: BiLSTMCTC):
        super().__init__()
        self.subsampling = model.config.subsampling
        self.input_proj, self.output_proj = model.input_proj, model.output_proj
        self.forward_lstms, self.backward_lstms = nn.ModuleList(), nn.ModuleList()
        for lstm in model.lstms:
            for suffix, target in (("", self.forward_lstms), ("_reverse", self.backward_lstms)):
                one = nn.LSTM(lstm.input_size, lstm.hidden_size, batch_first=True)
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(one, f"{name}_l0").data.copy_(getattr(lstm, f"{name}_l0{suffix}").data)
                target.append(one)

    @staticmethod
    def _reverse_within(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        t = torch.arange(x.shape[1], device=x.device)[None, :]
        idx = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)
        return x.gather(1, idx[..., None].expand(-1, -1, x.shape[2]))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.input_proj(x)
        s = self.subsampling
        out_len = torch.div(lengths + (s - 1), s, rounding_mode="floor")
        if s > 1:
            mask = (torch.arange(y.shape[1], device=y.device)[None, :] < lengths[:, None]).to(y.dtype)
            pool = dict(kernel_size=s, stride=s, ceil_mode=True)
            num = nn.functional.avg_pool1d((y * mask[..., None]).transpose(1, 2), **pool)
            den = nn.functional.avg_pool1d(mask[:, None, :], **pool)
            y = (num / den.clamp_min(1e-12)).transpose(1, 2)
        for fwd, bwd in zip(self.forward_lstms, self.backward_lstms):
            a, _ = fwd(y)
            b, _ = bwd(self._reverse_within(y, out_len))
            y = torch.cat([a, self._reverse_within(b, out_len)], dim=2)
        return self.output_proj(y).log_softmax(-1), out_len

