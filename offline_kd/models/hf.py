"""A wav2vec2-family CTC student (`model.type: hf`): a transformers `Wav2Vec2Model`, `HubertModel` or `WavLMModel`
with few transformer layers, reading the corpus's kept waveform (`data import --keep-audio`), and a linear CTC head
over the student's vocabulary.

    samples (B, N) in [-1, 1) -> per-utterance normalisation -> convolutional feature encoder (one frame per 320
    samples: 20 ms at 16 kHz) -> feature projection -> transformer layers 1..num_layers -> Linear(d, V)

Frames: with the corpus's 10 ms feature hop, 25 ms windows and 16 kHz audio, the encoder's frame count equals
ceil(feature frames / 2) for every length, so the student lines up with a cache dumped at `subsampling: 2` (the
teacher's targets on the student's frames). The trainer passes the utterances' feature frame counts
(`num_frames`); an utterance whose frame count differs from ceil(num_frames / subsampling) by one (other window
settings) is trimmed or its last frame repeated, by more is a one-line error naming model.subsampling.

Settings (ModelConfig): `hidden_dim` (hidden_size), `num_layers` (num_hidden_layers), `num_heads` (4), `ffn_mult`
(4: intermediate_size = ffn_mult x hidden_dim), `dropout` (hidden, attention, activation and projection dropout),
`hf_family` (wav2vec2), `hf_config` (any further transformers config key, e.g. a smaller `conv_dim`, or
`mask_time_prob`, transformers' own SpecAugment on the encoder's frames: the feature-level SpecAugment of
`augment` does not apply to waveforms). The default feature encoder uses layer normalisation
(`feat_extract_norm: layer`) and runs batched with an attention mask, so that an utterance's outputs do not depend
on its batch-mates; with group normalisation (wav2vec2-base) it runs one utterance at a time outside training.

`init_from: DIR` (a Hugging Face CTC directory, as for a teacher) takes the teacher's architecture (its family,
heads, feed-forward and feature encoder; `hidden_dim` must be its width) with `num_layers` transformer layers, and
copies its feature encoder, feature projection, positional convolution and first `num_layers` layers
(DistilHuBERT's initialisation), every one of them or a one-line error; the CTC head is new (the student's
vocabulary). A checkpoint stores the resolved transformers config, so it rebuilds without the directory.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Iterable, Optional

import torch
from torch import nn

from offline_kd.config import WAVEFORM_RATE, ModelConfig, build_dataclass
from offline_kd.errors import OfflineKDError
from offline_kd.models.hf_directory import _json, resolve_model_dir, weight_files
from offline_kd.models.interface import FromConfig, register_model

#: hf_family -> (transformers config class, base model class, the prefix of its weights inside a *ForCTC model)
FAMILIES = {"wav2vec2": ("Wav2Vec2Config", "Wav2Vec2Model", "wav2vec2."),
            "hubert": ("HubertConfig", "HubertModel", "hubert."),
            "wavlm": ("WavLMConfig", "WavLMModel", "wavlm.")}
DEFAULTS = {"num_heads": 4, "ffn_mult": 4}
#: what init_from copies besides the first num_layers transformer layers (all of it must be found)
COPIED = ("feature_extractor.", "feature_projection.", "encoder.pos_conv_embed.")
#: transformers config keys a checkpoint does not keep (bookkeeping and the unused classification labels)
UNSTORED = ("architectures", "transformers_version", "model_type", "torch_dtype", "dtype", "id2label", "label2id",
            "_name_or_path")
KEYS = ("type", "input_dim", "hidden_dim", "num_layers", "num_classes", "dropout", "subsampling", "num_heads",
        "ffn_mult", "hf_family", "hf_config")


def _transformers():
    try:
        import transformers
    except ImportError:
        raise OfflineKDError("model.type hf needs transformers: pip install 'offline-kd[hf]'") from None
    transformers.utils.logging.set_verbosity_error()
    return transformers


def _teacher_config(directory: str) -> tuple[Path, dict]:
    d = resolve_model_dir(directory, "model.init_from")
    config = _json(d / "config.json", "model.init_from")
    if config.get("model_type") not in FAMILIES:
        raise OfflineKDError(f"model.init_from: {d} holds a {config.get('model_type')!r} model; the hf student "
                             f"initialises from {', '.join(FAMILIES)}")
    return d, config


def resolve(c: ModelConfig) -> tuple[ModelConfig, dict]:
    """(the ModelConfig with the family, heads and feed-forward filled in, the transformers config as a dict)."""
    base, family, given = {}, c.hf_family, dict(c.hf_config or {})
    if c.init_from:
        d, teacher = _teacher_config(c.init_from)
        if family is not None and family != teacher["model_type"]:
            raise OfflineKDError(f"model.hf_family {family}: model.init_from {d} is a {teacher['model_type']} model")
        family = teacher["model_type"]
        t = getattr(_transformers(), FAMILIES[family][0])(**{k: v for k, v in teacher.items() if k != "model_type"})
        width, heads, inner = int(t.hidden_size), int(t.num_attention_heads), int(t.intermediate_size)
        if c.hidden_dim != width:
            raise OfflineKDError(f"model.hidden_dim: {c.hidden_dim} differs from model.init_from's hidden size "
                                 f"({width} in {d}); the student keeps the teacher's width: set "
                                 f"model.hidden_dim={width}")
        for key, mine, theirs in (("num_heads", c.num_heads, heads),
                                  ("ffn_mult", c.ffn_mult and c.ffn_mult * c.hidden_dim, inner)):
            if mine is not None and mine != theirs:
                raise OfflineKDError(f"model.{key}: {mine} differs from model.init_from's ({theirs} in {d}); the "
                                     f"student keeps the teacher's shape: leave it out or set it to match")
        if c.num_layers > int(t.num_hidden_layers):
            raise OfflineKDError(f"model.num_layers {c.num_layers}: model.init_from {d} has only "
                                 f"{t.num_hidden_layers} layers to copy")
        base = {k: v for k, v in t.to_dict().items() if k not in UNSTORED}
        c = replace(c, num_heads=heads)
    _check_keys(given, family or "wav2vec2")
    heads = c.num_heads or DEFAULTS["num_heads"]
    inner = (c.ffn_mult * c.hidden_dim if c.ffn_mult else given.get("intermediate_size")
             or base.get("intermediate_size") or DEFAULTS["ffn_mult"] * c.hidden_dim)
    c = replace(c, hf_family=family or "wav2vec2", num_heads=heads,
                ffn_mult=None if inner % c.hidden_dim else inner // c.hidden_dim)
    if c.hidden_dim % heads:
        raise OfflineKDError(f"model.hidden_dim ({c.hidden_dim}) must be a multiple of model.num_heads ({heads})")
    own = {"hidden_size": c.hidden_dim, "num_hidden_layers": c.num_layers, "num_attention_heads": heads,
           "intermediate_size": inner, "vocab_size": c.num_classes}
    clash = [k for k in own if k in given and given[k] != own[k]]
    if clash:
        raise OfflineKDError(f"model.hf_config.{clash[0]}: {given[clash[0]]} contradicts the model's own keys "
                             f"(hidden_dim, num_layers, num_heads, ffn_mult, num_classes give {own[clash[0]]}); "
                             f"remove it from hf_config")
    dropouts = {k: c.dropout for k in ("hidden_dropout", "attention_dropout", "activation_dropout",
                                         "feat_proj_dropout", "final_dropout")}
    return c, {"feat_extract_norm": "layer", "do_stable_layer_norm": True, **base, **dropouts, **given, **own,
               "layerdrop": 0.0}


def _check_keys(given: dict, family: str) -> None:
    """hf_config keys the transformers config does not know would be stored and do nothing: refused, as is a
    layerdrop (a dropped layer's hidden states would be missing from the feature terms)."""
    cls = getattr(_transformers(), FAMILIES[family][0])
    known = set(cls().to_dict()) - set(UNSTORED)
    unknown = sorted(k for k in given if k not in known)
    if unknown:
        raise OfflineKDError(f"model.hf_config.{unknown[0]}: not a key of transformers' {cls.__name__}")
    if given.get("layerdrop", 0.0):
        raise OfflineKDError("model.hf_config.layerdrop: the student keeps every layer (the feature terms read "
                             "their hidden states); leave it out")


@register_model("hf")
class HFStudent(FromConfig, nn.Module):
    KEYS = KEYS
    input_kind = "waveform"
    sample_rate = WAVEFORM_RATE       # the wav2vec2 family's; the corpus's kept audio must be at it

    def __init__(self, config: ModelConfig):
        super().__init__()
        c, resolved = resolve(config)
        tf = _transformers()
        cfg_cls, model_cls, _ = FAMILIES[c.hf_family]
        try:
            self.hf_config = getattr(tf, cfg_cls)(**resolved)
            self.encoder = getattr(tf, model_cls)(self.hf_config)
        except (TypeError, ValueError) as exc:
            raise OfflineKDError(f"model.hf_config: transformers refuses it ({type(exc).__name__}: "
                                 f"{' '.join(str(exc).split())[:200]})") from None
        self.config = replace(c, init_from=None, hf_config={k: v for k, v in self.hf_config.to_dict().items()
                                                            if k not in UNSTORED})
        self.batched = self.hf_config.feat_extract_norm == "layer"
        self.drop = nn.Dropout(c.dropout)
        self.output_proj = nn.Linear(c.hidden_dim, c.num_classes)
        self.copied = self._init_from(config.init_from) if config.init_from else 0

    def _init_from(self, directory: str) -> int:
        """Copy the teacher's feature encoder, projection, positional convolution and first layers; the count of
        tensors copied."""
        from safetensors.torch import load_file
        d, teacher = _teacher_config(directory)
        prefix = FAMILIES[teacher["model_type"]][2]
        mine = self.encoder.state_dict()
        copied = {}
        for f in weight_files(d, "model.init_from"):
            for k, v in load_file(str(f)).items():
                name = _current_name(k[len(prefix):]) if k.startswith(prefix) else None
                if name in mine and mine[name].shape == v.shape:
                    copied[name] = v
        wanted = [k for k in mine if k.startswith(COPIED) or any(k.startswith(f"encoder.layers.{i}.")
                                                                 for i in range(self.config.num_layers))]
        missing = [k for k in wanted if k not in copied]
        if missing:
            raise OfflineKDError(f"model.init_from: {len(missing)} of the student's {len(wanted)} tensors to copy have "
                                 f"no counterpart of the same name and shape in {d} (first: {missing[0]}); its "
                                 f"hf_config must keep the teacher's feature encoder")
        self.encoder.load_state_dict(copied, strict=False)
        self.copied_names = sorted(copied)
        return len(copied)

    @classmethod
    def from_description(cls, description: dict, where: str = "model_config") -> "HFStudent":
        return cls(build_dataclass(ModelConfig, {**description, "type": "hf"}, where))

    # --------------------------------------------------------------------------------------- the protocol
    def summary(self) -> str:
        c = self.config
        return (f"{c.hf_family} student, {c.num_layers} x transformer(d={c.hidden_dim}, {c.num_heads} heads), "
                f"{self.frame_shift_samples}-sample frames")

    @property
    def frame_shift_samples(self) -> int:
        out = 1
        for s in self.hf_config.conv_stride:
            out *= int(s)
        return out

    def output_lengths(self, samples: torch.Tensor) -> torch.Tensor:
        return self.encoder._get_feat_extract_output_lengths(samples).to(torch.int64)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, num_frames: Optional[torch.Tensor] = None):
        log_probs, out_len, _ = self.forward_with_hidden_states(x, lengths, None, num_frames=num_frames)
        return log_probs, out_len

    def forward_with_hidden_states(self, audio: torch.Tensor, lengths: torch.Tensor,
                                   return_layer_indices: Optional[Iterable[int]] = None,
                                   num_frames: Optional[torch.Tensor] = None):
        """Samples (B, N) in [-1, 1) and their counts (B,) -> log_probs (T', B, V), output_lengths (B,),
        {layer: (B, T', d)}; with `num_frames` (the utterances' feature frames) on ceil(num_frames / subsampling)
        frames."""
        wanted = sorted(self.wanted_layers(return_layer_indices))
        lengths = lengths.to(audio.device, torch.int64)
        x = normalise(audio.float(), lengths)
        if self.batched or self.training:
            mask = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]).long()
            states, hidden = self._run(x, mask if self.batched else None, wanted)
        else:                       # group norm: one utterance at a time, so padding changes nothing
            parts = [self._run(x[b:b + 1, :int(lengths[b])], None, wanted) for b in range(x.shape[0])]
            states = _pad_cat([p[0] for p in parts])
            hidden = {L: _pad_cat([p[1][L] for p in parts]) for L in wanted}
        out_len = self.output_lengths(lengths).clamp_max(states.shape[1])
        if num_frames is not None:
            out_len, pick = self._line_up(out_len, num_frames.to(out_len.device, torch.int64))
            states = _gather(states, pick)
            hidden = {L: _gather(h, pick) for L, h in hidden.items()}
        logits = self.output_proj(self.drop(states))
        return logits.log_softmax(-1).transpose(0, 1), out_len, hidden

    def _run(self, x, mask, layers):
        out = self.encoder(x, attention_mask=mask, output_hidden_states=bool(layers))
        return out.last_hidden_state, ({L: out.hidden_states[L] for L in layers} if layers else {})

    def _line_up(self, out_len: torch.Tensor, num_frames: torch.Tensor):
        """(ceil(num_frames / subsampling), (B, T) frame indices): each utterance's own frames, trimmed or its last
        one repeated where they differ by one."""
        target = -(-num_frames // self.config.subsampling)
        off = (target - out_len).abs()
        if bool((off > 1).any()):
            b = int(off.argmax())
            raise OfflineKDError(
                f"model.subsampling {self.config.subsampling}: an utterance of {int(num_frames[b])} feature frames "
                f"gives {int(out_len[b])} frames of {self.frame_shift_samples} samples, not {int(target[b])}; the "
                f"student's frames line up with the features only when model.subsampling x the feature hop (in "
                f"samples) equals {self.frame_shift_samples}")
        t = int(target.max()) if len(target) else 0
        pick = torch.minimum(torch.arange(t, device=out_len.device)[None, :], (out_len - 1).clamp_min(0)[:, None])
        return target, pick

    def exportable(self) -> nn.Module:
        """The function for tracing (ONNX, TorchScript): samples (N, S) in [-1, 1), samples_lens (N,) ->
        log_probs (N, T', V), log_probs_len (N,). A group-norm feature encoder normalises over the whole input,
        so its graph takes one utterance at a time (N = 1, `one_at_a_time`)."""
        return _WaveformGraph(self)


class _WaveformGraph(nn.Module):
    def __init__(self, model: HFStudent):
        super().__init__()
        self.model = model
        self.one_at_a_time = not model.batched

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        m = self.model
        if self.one_at_a_time:      # group norm sees every sample it is given: the utterance's own samples only
            x = x[:, :lengths[0]]
        x = normalise(x.float(), lengths)
        mask = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]).long() if m.batched else None
        states, _ = m._run(x, mask, [])
        out_len = m.output_lengths(lengths).clamp_max(states.shape[1])
        return m.output_proj(states).log_softmax(-1), out_len


def _current_name(name: str) -> str:
    """A weight's name as this transformers version has it: checkpoints saved with weight normalisation's old
    names (the positional convolution's weight_g / weight_v) load as its parametrization's."""
    for old, new in ((".weight_g", ".parametrizations.weight.original0"),
                     (".weight_v", ".parametrizations.weight.original1")):
        if name.endswith(old):
            return name[: -len(old)] + new
    return name


def normalise(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each utterance to zero mean and unit variance over its own samples (the wav2vec2 feature extractor's
    do_normalize), padding left at 0."""
    mask = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]).to(x.dtype)
    n = mask.sum(1, keepdim=True).clamp_min(1)
    mean = (x * mask).sum(1, keepdim=True) / n
    var = (((x - mean) * mask) ** 2).sum(1, keepdim=True) / n
    return (x - mean) / torch.sqrt(var + 1e-7) * mask


def _pad_cat(parts: list[torch.Tensor]) -> torch.Tensor:
    t = max(p.shape[1] for p in parts)
    return torch.cat([nn.functional.pad(p, (0, 0, 0, t - p.shape[1])) for p in parts])


def _gather(h: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
    """h (B, T, D), pick (B, T') frame indices -> (B, T', D)."""
    return h.gather(1, pick.clamp_max(h.shape[1] - 1)[..., None].expand(-1, -1, h.shape[2]))
