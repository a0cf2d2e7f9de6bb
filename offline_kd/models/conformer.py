"""Conformer-CTC (Gulati et al. 2020, "Conformer: Convolution-augmented Transformer for Speech Recognition").

    features (B, T, D) -> convolutional subsampling (2x, 3x, 4x, 6x or 8x) -> Linear(., d)
      -> N x block -> Linear(d, V) -> log_softmax
    block: x + 1/2 FFN(x) -> x + MHSA(x) -> x + Conv(x) -> x + 1/2 FFN(x) -> LayerNorm
    FFN:   LayerNorm -> Linear(d, m d) -> SiLU -> Dropout -> Linear(m d, d) -> Dropout
    MHSA:  LayerNorm -> multi-head self-attention with rotary positions -> Dropout
    Conv:  LayerNorm -> pointwise Conv1d(d, 2d) -> GLU -> depthwise Conv1d(k) -> LayerNorm -> SiLU
           -> pointwise Conv1d(d, d) -> Dropout

Two choices differ from the paper, both so that an utterance's outputs never depend on what it is batched with:

- Positions are rotary (RoPE, Su et al. 2021) rather than Transformer-XL relative encodings: attention scores
  depend only on the offset between two frames, as with relative encodings, without the extra position
  projections and bias terms, and the rotation is elementwise, so it traces and exports to ONNX as it is.
- The convolution module normalises with LayerNorm where the paper uses BatchNorm, whose statistics would mix
  utterances and padding during training (as several later Conformer implementations do).

Padding: frames past an utterance's length are zeroed before every convolution (subsampling and depthwise) and
masked out of attention, so valid outputs equal the utterance's outputs alone (to float rounding). Each
subsampling stage of stride s is a Conv2d of kernel 2s-1, padding s-1 (over time and frequency), which gives
ceil(T / s) frames: the project's one output-length rule (`data.validate.output_frames`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Optional

import torch
from torch import nn
from torch.nn import functional as F

from offline_kd.config import ModelConfig, build_dataclass
from offline_kd.data.validate import output_frames
from offline_kd.errors import OfflineKDError
from offline_kd.models.interface import FromConfig, register_model

#: subsampling factor -> the strides of its Conv2d stages
STAGES = {1: (), 2: (2,), 3: (3,), 4: (2, 2), 6: (2, 3), 8: (2, 2, 2)}
#: the Conformer's own settings (ModelConfig keys) and their defaults
DEFAULTS = {"num_heads": 4, "ffn_mult": 4, "conv_kernel": 15, "subsampling_channels": 64}
#: the ModelConfig keys a Conformer reads
KEYS = ("type", "input_dim", "hidden_dim", "num_layers", "num_classes", "dropout", "subsampling", "num_heads",
        "ffn_mult", "conv_kernel", "subsampling_channels")


def _mask(lengths: torch.Tensor, t: int) -> torch.Tensor:
    """(B, t) bool, True on valid frames."""
    return torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]


class ConvSubsampling(nn.Module):
    """Conv2d stages of stride s (kernel 2s-1, padding s-1) with ReLU, then Linear(channels x freq, d)."""

    def __init__(self, input_dim: int, d_model: int, factor: int, channels: int):
        super().__init__()
        self.strides = STAGES[factor]
        convs, freq, c_in = [], input_dim, 1
        for s in self.strides:
            convs.append(nn.Conv2d(c_in, channels, 2 * s - 1, stride=s, padding=s - 1))
            freq, c_in = output_frames(freq, s), channels
        self.convs = nn.ModuleList(convs)
        self.out = nn.Linear(c_in * freq, d_model)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        x = x.unsqueeze(1)                                                     # (B, 1, T, D)
        for conv, s in zip(self.convs, self.strides):
            x = x * _mask(lengths, x.shape[2])[:, None, :, None].to(x.dtype)
            x = F.relu(conv(x))
            lengths = output_frames(lengths, s)
        b, c, t, f = x.shape
        return self.out(x.transpose(1, 2).reshape(b, t, c * f)), lengths


def rotary(x: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, Dh) queries or keys by their frame index (RoPE; Dh even)."""
    t, dh = x.shape[2], x.shape[3]
    inv = 1.0 / (10000 ** (torch.arange(0, dh, 2, device=x.device, dtype=torch.float32) / dh))
    ang = torch.arange(t, device=x.device, dtype=torch.float32)[:, None] * inv[None, :]   # (T, Dh/2)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)


class SelfAttention(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm, self.qkv, self.proj = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(rotary(q), rotary(k), v, attn_mask=mask[:, None, None, :],
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.drop(self.proj(y.transpose(1, 2).reshape(b, t, d)))


class ConvModule(nn.Module):
    def __init__(self, d: int, kernel: int, dropout: float):
        super().__init__()
        self.norm, self.pointwise_in = nn.LayerNorm(d), nn.Conv1d(d, 2 * d, 1)
        self.depthwise = nn.Conv1d(d, d, kernel, padding=kernel // 2, groups=d)
        self.conv_norm, self.pointwise_out, self.drop = nn.LayerNorm(d), nn.Conv1d(d, d, 1), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = F.glu(self.pointwise_in(self.norm(x).transpose(1, 2)), dim=1)           # (B, d, T)
        y = self.depthwise(y * mask[:, None, :].to(y.dtype))
        y = F.silu(self.conv_norm(y.transpose(1, 2)))
        return self.drop(self.pointwise_out(y.transpose(1, 2)).transpose(1, 2))


class FeedForward(nn.Sequential):
    def __init__(self, d: int, mult: int, dropout: float):
        super().__init__(nn.LayerNorm(d), nn.Linear(d, mult * d), nn.SiLU(), nn.Dropout(dropout),
                         nn.Linear(mult * d, d), nn.Dropout(dropout))


class ConformerBlock(nn.Module):
    def __init__(self, d: int, heads: int, mult: int, kernel: int, dropout: float):
        super().__init__()
        self.ff1, self.ff2 = FeedForward(d, mult, dropout), FeedForward(d, mult, dropout)
        self.attn, self.conv, self.norm = SelfAttention(d, heads, dropout), ConvModule(d, kernel, dropout), nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.ff1(x)
        x = x + self.attn(x, mask)
        x = x + self.conv(x, mask)
        return self.norm(x + 0.5 * self.ff2(x))


@register_model("conformer")
class ConformerCTC(FromConfig, nn.Module):
    KEYS = KEYS
    def __init__(self, config: ModelConfig):
        super().__init__()
        c = self.config = replace(config, **{k: getattr(config, k) or v for k, v in DEFAULTS.items()})
        if c.hidden_dim % c.num_heads or (c.hidden_dim // c.num_heads) % 2:
            raise OfflineKDError(f"model.hidden_dim ({c.hidden_dim}) must be a multiple of 2 x model.num_heads "
                                 f"({c.num_heads}) for the Conformer's rotary attention heads")
        if c.subsampling not in STAGES:
            raise OfflineKDError(f"model.subsampling {c.subsampling}: the Conformer subsamples by "
                                 f"{', '.join(map(str, STAGES))}")
        self.subsample = ConvSubsampling(c.input_dim, c.hidden_dim, c.subsampling, c.subsampling_channels)
        self.blocks = nn.ModuleList(ConformerBlock(c.hidden_dim, c.num_heads, c.ffn_mult, c.conv_kernel, c.dropout)
                                    for _ in range(c.num_layers))
        self.drop = nn.Dropout(c.dropout)
        self.output_proj = nn.Linear(c.hidden_dim, c.num_classes)

    @classmethod
    def from_description(cls, description: dict, where: str = "model_config") -> "ConformerCTC":
        return cls(build_dataclass(ModelConfig, {**description, "type": "conformer"}, where))

    # --------------------------------------------------------------------------------------- the protocol
    def summary(self) -> str:
        c = self.config
        return f"{c.num_layers} x Conformer(d={c.hidden_dim}, {c.num_heads} heads, {c.subsampling}x)"

    def forward_with_hidden_states(self, x: torch.Tensor, lengths: torch.Tensor,
                                   return_layer_indices: Optional[Iterable[int]] = None):
        """x (B, T, D), lengths (B,) -> log_probs (T', B, V), output_lengths (B,), {block: (B, T', d)}."""
        wanted = self.wanted_layers(return_layer_indices)
        y, out_len = self.subsample(x, lengths)
        y = self.drop(y)
        mask = _mask(out_len, y.shape[1])
        hidden: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.blocks, start=1):
            y = block(y, mask)
            if i in wanted:
                hidden[i] = y
        return self.output_proj(y).log_softmax(-1).transpose(0, 1), out_len, hidden

    def exportable(self) -> nn.Module:
        """The same function for tracing (ONNX, TorchScript): (B, T', V) log-probs, batch first."""
        return _BatchFirst(self)


class _BatchFirst(nn.Module):
    def __init__(self, model: ConformerCTC):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        log_probs, out_len = self.model(x, lengths)
        return log_probs.transpose(0, 1), out_len

