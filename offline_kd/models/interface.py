"""What a CTC model offers the rest of the toolkit, and the registry that rebuilds one from a checkpoint.

Training, the dump, the losses and evaluation see a model only through `CTCModel`: its input (feature dimension),
its output (classes, the blank's index, output frames per input frame), the layers whose hidden states it can
return and their widths, `forward` / `forward_with_hidden_states`, and a plain description that rebuilds it.
Nothing outside `models/` reads a model's own config.

A checkpoint names its model type (`model_type`; checkpoints written before the registry are "bilstm") and
carries the type's description (`model_config`); `build_from_description` rebuilds the model through the type
registered under that name. Adding a model type: a module in `models/` with a class that follows `CTCModel`,
decorated with `@register_model("name")` and imported by `models/__init__.py` (docs/extending.md).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Callable, Iterable, Optional, Protocol, runtime_checkable

import torch
from torch import nn

from offline_kd.errors import OfflineKDError

DEFAULT_MODEL_TYPE = "bilstm"      # checkpoints written before model types were recorded


@runtime_checkable
class CTCModel(Protocol):
    """A CTC acoustic model (an `nn.Module`).

    Shapes: features (B, T, D); log_probs (T', B, V), log-softmax at temperature 1; output_lengths (B,);
    hidden states {layer: (B, T', width)} for 1-based layer indices. A model that reads waveforms (a teacher such as
    teachers/alignment.py's AlignedTeacher, or the `hf` student) says so with `input_kind = "waveform"`: it is
    called with samples (B, N), their counts, and `num_frames`, the feature frames its outputs line up with
    (`forward_batch`, `waveform_forward`), and is fed the corpus's kept audio.
    """

    model_type: str            # its name in the registry

    @property
    def input_dim(self) -> int: ...

    @property
    def num_classes(self) -> int: ...

    @property
    def blank(self) -> int: ...

    @property
    def subsampling(self) -> int:
        """Input frames per output frame (output_lengths = ceil(T / subsampling))."""

    @property
    def num_layers(self) -> int:
        """Layers whose hidden states it can return: 1..num_layers."""

    def layer_dims(self) -> dict[int, int]:
        """{layer: width of its hidden states} for every layer it exposes."""

    def describe(self) -> dict:
        """Plain values (JSON/YAML-safe) that rebuild the architecture (stored as a checkpoint's model_config)."""

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def forward_with_hidden_states(self, x: torch.Tensor, lengths: torch.Tensor,
                                   return_layer_indices: Optional[Iterable[int]] = None
                                   ) -> tuple[torch.Tensor, torch.Tensor, dict[int, torch.Tensor]]: ...


class FromConfig:
    """What every model built from a `ModelConfig` (`self.config`) shares: the protocol's plain properties (the blank
    is class 0), the check of requested layers, and `forward` as `forward_with_hidden_states` without hidden states.
    Mixed into each registered type before `nn.Module`."""

    #: the ModelConfig keys that describe the type (a checkpoint's model_config)
    KEYS: tuple = ()

    @property
    def layer_width(self) -> int:
        """The width of every layer's hidden states (the model width; a BiLSTM's: both directions)."""
        return self.config.hidden_dim

    def layer_dims(self) -> dict[int, int]:
        return {i: self.layer_width for i in range(1, self.config.num_layers + 1)}

    def describe(self) -> dict:
        return {k: v for k, v in asdict(self.config).items() if k in self.KEYS}

    def wanted_layers(self, indices: Optional[Iterable[int]]) -> set:
        """The requested 1-based layers, each checked against num_layers (ValueError outside)."""
        wanted = set(indices or [])
        bad = [i for i in wanted if not 1 <= i <= self.config.num_layers]
        if bad:
            raise ValueError(f"layer indices {bad} out of range 1..{self.config.num_layers}")
        return wanted

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        """x (B, T, D), lengths (B,) -> log_probs (T', B, V), output_lengths (B,)."""
        log_probs, out_len, _ = self.forward_with_hidden_states(x, lengths, None)
        return log_probs, out_len

    @property
    def input_dim(self) -> int:
        return self.config.input_dim

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def blank(self) -> int:
        return 0

    @property
    def subsampling(self) -> int:
        return self.config.subsampling

    @property
    def num_layers(self) -> int:
        return self.config.num_layers


#: model type name -> callable(description dict, where) -> model
_REGISTRY: dict[str, Callable[[dict, str], nn.Module]] = {}
_CLASSES: dict[str, type] = {}


def register_model(name: str):
    """Class decorator: `cls.from_description(description, where)` rebuilds the model; the class's
    `model_type` becomes `name`."""
    def deco(cls):
        if name in _REGISTRY:
            raise ValueError(f"model type {name!r} registered twice")
        cls.model_type = name
        _REGISTRY[name] = cls.from_description
        _CLASSES[name] = cls
        return cls
    return deco


def build_model(config) -> nn.Module:
    """The model `config` (a ModelConfig) describes, of the type `config.type` names, freshly initialised."""
    if config.type not in _CLASSES:
        raise OfflineKDError(f"model.type: unknown model type {config.type!r} (known: {', '.join(model_types())})")
    return _CLASSES[config.type](config)


def model_types() -> list[str]:
    return sorted(_REGISTRY)


def build_from_description(model_type: str, description: dict, where: str = "model_config") -> nn.Module:
    """The model of type `model_type` that `description` (its `describe()`) describes; one-line errors."""
    if model_type not in _REGISTRY:
        raise OfflineKDError(f"{where}: unknown model type {model_type!r} (known: {', '.join(model_types())})")
    if not isinstance(description, dict):
        raise OfflineKDError(f"{where} is a {type(description).__name__}, not a mapping")
    try:
        return _REGISTRY[model_type](description, where)
    except OfflineKDError:
        raise
    except Exception as exc:  # noqa: BLE001 - values of the wrong kind that the typed loader let through
        raise OfflineKDError(f"{where} does not build a {model_type} model ({exc.__class__.__name__}: "
                             f"{(str(exc).splitlines() or [''])[0][:160]})") from None


def reads_waveform(model) -> bool:
    """Whether `model` (a teacher or a student) reads waveforms (`input_kind` "waveform") rather than features."""
    return getattr(model, "input_kind", "features") == "waveform"


def forward_batch(model, batch: dict, device: torch.device, layers=None):
    """`model.forward_with_hidden_states` on a collated batch: its features, or, for a model that reads waveforms
    (`input_kind` "waveform"), its samples with the feature frame counts its outputs must line up with. A model
    with a `forward_batch` of its own (an ensemble of teachers of both kinds) takes the batch itself."""
    if callable(getattr(model, "forward_batch", None)):
        return model.forward_batch(batch, device, layers)
    if reads_waveform(model):
        return waveform_forward(model, batch, device, layers)
    return model.forward_with_hidden_states(batch["features"].to(device, non_blocking=True),
                                            batch["feature_lengths"].to(device), layers)


def check_waveform_frames(model, frontend: Optional[dict]) -> None:
    """A model that reads waveforms and says its frame shift in samples (`frame_shift_samples`) against the
    corpus's feature frames (its front-end record): its frames line up with the features only when the shift is
    `subsampling` feature hops; refused before anything is written otherwise."""
    shift = getattr(model, "frame_shift_samples", None)
    if not reads_waveform(model) or shift is None or not frontend or "frame_shift_ms" not in frontend:
        return
    hop = int(frontend["sample_rate"]) * float(frontend["frame_shift_ms"]) / 1000
    if abs(shift - hop * model.subsampling) > 1e-6:
        fits = shift / hop
        raise OfflineKDError(f"model.subsampling {model.subsampling}: the model's frames are {shift} samples and the "
                             f"corpus's feature frames {hop:g}, so its frames are {fits:g} feature frames"
                             + (f"; set model.subsampling={int(fits)}" if fits == int(fits) else
                                "; no integer subsampling lines them up (change its conv_stride)"))


def waveform_forward(model, batch: dict, device: torch.device, layers=None):
    """A model that reads waveforms on a training batch: its samples, and as `num_frames` the feature frame counts
    its outputs line up with (the cached targets' frames)."""
    return model.forward_with_hidden_states(batch["audio"].to(device), batch["audio_lengths"].to(device), layers,
                                            num_frames=batch["feature_lengths"].to(device))


def model_identity(model: CTCModel) -> dict:
    """What identifies an architecture: its type and description (the weights are hashed separately)."""
    return {"model_type": model.model_type, "model_config": model.describe()}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_size_mb(model: nn.Module) -> float:
    """float32 weight bytes in MB (10^6)."""
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6


def describe_model(model) -> str:
    """A short description for logs: the model's own `summary()` if it has one, else its type and depth."""
    summary = getattr(model, "summary", None)
    if callable(summary):
        return summary()
    return f"{getattr(model, 'model_type', type(model).__name__)}, {getattr(model, 'num_layers', '?')} layers"
