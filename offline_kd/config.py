"""YAML configs as frozen, typed dataclasses.

`load_config(path, Schema, overrides)` reads YAML with `yaml.safe_load` (configs are data, never code), applies
`--set section.key=value` overrides, and builds the dataclass tree. Unknown keys and wrong types are rejected with
the full key path in the message (`model.hidden_dim: expected int, got 'big'`). A key that takes one of a set of
values is typed `Literal[...]`; another value is refused with the allowed ones (`train.scheduler must be cosine or
constant, got 'cosin'`), by the loader and by the dataclass itself when built directly.

`validate_experiment(cfg, command)` holds the rules that involve more than one section of an experiment config
(`train` takes no distill section, `train-student` needs one, ...); each command calls it first.
"""

from __future__ import annotations

import dataclasses
import sys
import functools
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional, Union

import yaml

from offline_kd.errors import OfflineKDError


# ------------------------------------------------------------------------------------------------------ choices
#: how a set of choices is listed in the error, where it is not "a, b or c" (the wording these keys always had)
_LISTED = {("fp32", "bf16", "fp16"): "one of fp32, bf16, fp16"}


def _is_literal(tp: Any) -> bool:
    return typing.get_origin(tp) is Literal


def _is_choice(value: Any, choices: tuple) -> bool:
    return any(type(value) is type(c) and value == c for c in choices)


def _choice_error(path: str, value: Any, choices: tuple) -> OfflineKDError:
    """`{path} must be a, b or c, got 'x'`: one line with the key path, the value and the allowed values."""
    names = [str(c) for c in choices]
    listed = _LISTED.get(tuple(choices)) or (", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1
                                             else names[0])
    return OfflineKDError(f"{path} must be {listed}, got {value!r}")


def _check_choices(obj) -> None:
    """The `Literal[...]` fields of a section built directly (the loader checks them as it reads a config)."""
    for name, choices in _choice_fields(type(obj)):
        if not _is_choice(getattr(obj, name), choices):
            raise _choice_error(f"{obj.SECTION}.{name}", getattr(obj, name), choices)


@functools.cache
def _choice_fields(cls: type) -> tuple:
    return tuple((name, typing.get_args(tp)) for name, tp in typing.get_type_hints(cls).items() if _is_literal(tp))


Precision = Literal["fp32", "bf16", "fp16"]     # fp16 needs CUDA
Where = Literal["auto", "host", "device"]       # where codecs run: auto = device on a GPU, host on a CPU
LM_LABELS = ("lm", "lm_1best")                  # distill.pseudo_labels that read the LM N-best a cache stores
AUTO_LM_LABELS = "lm_1best"     # what distill.pseudo_labels auto trains on where there is an LM N-best (docs/efficacy.md)


# ----------------------------------------------------------------------------------------------------- sections
def _at_least(section: str, obj, **minimums) -> None:
    for key, low in minimums.items():
        value = getattr(obj, key)
        if value is not None and value < low:
            raise OfflineKDError(f"{section}.{key} must be >= {low}, got {value}")

@dataclass(frozen=True)
class DataConfig:
    SECTION: ClassVar[str] = "data"   # its key path in a config (messages name keys by it)
    corpus: str = "data/demo"           # directory with {split}.h5, vocab.txt, corpus.json
    train_split: Union[str, list] = "train"   # a split, or a list of transcribed splits trained on as one (train)
    dev_split: str = "dev"
    batch_size: int = 16                # utterances per batch (upper bound)
    max_frames_per_batch: Optional[int] = None  # input frames per batch (upper bound), null = unbounded
    num_buckets: int = 10               # length buckets for the bucketed sampler
    # DataLoader worker processes; auto: none on a CPU (the loader thread keeps up there, workers take cores from
    # the model), min(6, cores per process - 1) on a GPU (decoding and reading must keep up with the device)
    num_workers: Union[int, str] = "auto"
    prefetch_batches: int = 2           # with num_workers 0: batches loaded ahead in a background thread
    skip_invalid: bool = False          # skip invalid utterances instead of failing

    def __post_init__(self):
        _at_least("data", self, batch_size=1, max_frames_per_batch=1, num_buckets=1, prefetch_batches=0)
        names = [self.train_split] if isinstance(self.train_split, str) else self.train_split
        if not isinstance(names, (list, tuple)) or not names or \
                not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
            raise OfflineKDError(f"data.train_split must be a split name or a list of distinct split names, "
                                 f"got {self.train_split!r}")
        if isinstance(self.num_workers, str) and self.num_workers != "auto" or \
                isinstance(self.num_workers, int) and self.num_workers < 0:
            raise OfflineKDError(f"data.num_workers must be auto or an integer >= 0, got {self.num_workers!r}")


#: each model type's own ModelConfig keys (null: the type's default), refused for the other types
MODEL_TYPE_KEYS = {"bilstm": (), "conformer": ("num_heads", "ffn_mult", "conv_kernel", "subsampling_channels"),
                   "hf": ("num_heads", "ffn_mult", "hf_family", "hf_config", "init_from")}
#: model types that read the corpus's kept waveform rather than its features
WAVEFORM_TYPES = ("hf",)
WAVEFORM_RATE = 16000           # the rate of the audio they read
_COMMON_MODEL_KEYS = ("input_dim", "hidden_dim", "num_layers", "num_classes", "dropout", "subsampling")


@dataclass(frozen=True)
class ModelConfig:
    """The model: `type` picks the architecture (docs/usage.md, "Models"); the keys below `subsampling` belong to
    some types only (MODEL_TYPE_KEYS; null: the type's default) and are refused for the others."""
    SECTION: ClassVar[str] = "model"
    type: Literal["bilstm", "conformer", "hf"] = "bilstm"
    input_dim: int = 512                # feature dimension (hf: of the features its frames line up with)
    hidden_dim: int = 256               # bilstm: LSTM units per direction; conformer, hf: the model width d
    num_layers: int = 4                 # LSTM layers, Conformer blocks or transformer layers
    num_classes: int = 1229             # including the CTC blank (id 0)
    dropout: float = 0.3
    subsampling: int = 2                # input frames per output frame (conformer: 1, 2, 3, 4, 6 or 8; hf: 2)
    num_heads: Optional[int] = None     # conformer, hf: attention heads (4)
    ffn_mult: Optional[int] = None      # conformer, hf: feed-forward width / hidden_dim (4)
    conv_kernel: Optional[int] = None   # conformer: depthwise convolution kernel, odd (15)
    subsampling_channels: Optional[int] = None   # conformer: channels of the subsampling convolutions (64)
    hf_family: Optional[Literal["wav2vec2", "hubert", "wavlm"]] = None   # hf: the transformers model (wav2vec2)
    hf_config: Optional[dict] = None    # hf: further transformers config keys (e.g. conv_dim, mask_time_prob)
    init_from: Optional[str] = None     # hf: a Hugging Face CTC directory whose feature encoder and first layers
    #                                     initialise the student (DistilHuBERT's recipe)

    def __post_init__(self):
        _check_choices(self)
        _at_least("model", self, input_dim=1, hidden_dim=1, num_layers=1, num_classes=2, subsampling=1)
        if not 0.0 <= self.dropout < 1.0:
            raise OfflineKDError(f"model.dropout must be in [0, 1), got {self.dropout}")
        mine = MODEL_TYPE_KEYS[self.type]
        for k in dict.fromkeys(k for keys in MODEL_TYPE_KEYS.values() for k in keys):
            if k not in mine and getattr(self, k) is not None:
                owners = " and ".join(t for t, keys in MODEL_TYPE_KEYS.items() if k in keys)
                raise OfflineKDError(f"model.{k} is a setting of model.type {owners}; model.type {self.type} takes "
                                     f"{', '.join(_COMMON_MODEL_KEYS + mine)}")
        for k in ("num_heads", "ffn_mult", "conv_kernel", "subsampling_channels"):
            if getattr(self, k) is not None and getattr(self, k) < 1:
                raise OfflineKDError(f"model.{k} must be >= 1, got {getattr(self, k)}")
        if self.conv_kernel is not None and self.conv_kernel % 2 == 0:
            raise OfflineKDError(f"model.conv_kernel must be odd, got {self.conv_kernel}")
        if self.hf_family is not None and self.hf_family not in ("wav2vec2", "hubert", "wavlm"):
            raise OfflineKDError(f"model.hf_family must be wav2vec2, hubert or wavlm, got {self.hf_family!r}")
        if self.hf_config is not None and not isinstance(self.hf_config, dict):
            raise OfflineKDError(f"model.hf_config must be a mapping of transformers config keys, got "
                                 f"{type(self.hf_config).__name__}")


@dataclass(frozen=True)
class AugmentConfig:
    """SpecAugment-style masking of the input. It keeps the number of frames, so cached targets still line up."""
    SECTION: ClassVar[str] = "augment"

    time_masks: int = 0
    time_mask_width: int = 10
    freq_masks: int = 0
    freq_mask_width: int = 20
    # `train` only: speeds (e.g. [0.9, 1.0, 1.1]); every batch is stretched by one of them, drawn from (seed, epoch,
    # batch). It changes the frame count, so distillation takes speed-perturbed views of the teacher (dump.views).
    speed_perturb: Optional[list] = None

    def __post_init__(self):
        if self.speed_perturb is not None:
            if not self.speed_perturb:
                raise OfflineKDError("augment.speed_perturb: give at least one speed, e.g. [0.9, 1.0, 1.1]")
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in self.speed_perturb):
                raise OfflineKDError(f"augment.speed_perturb must be a list of speeds, got {self.speed_perturb!r}")
            parse_views(list(self.speed_perturb), "augment.speed_perturb")


@dataclass(frozen=True)
class TrainConfig:
    SECTION: ClassVar[str] = "train"
    epochs: int = 10
    lr: float = 3e-4
    weight_decay: float = 0.0
    optimizer: Literal["adam", "adamw"] = "adamw"
    scheduler: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 0
    grad_clip: float = 5.0
    accumulation_steps: int = 1
    eval_every: int = 1                 # epochs between dev evaluations
    # early stopping: stop after this many dev evaluations in a row without a new best dev WER (train.epochs is then
    # the budget, and the cosine schedule runs over it: the stop shortens it); null: train all train.epochs
    patience: Optional[int] = None
    seed: int = 0
    device: str = "auto"                # auto | cpu | cuda | cuda:N
    precision: Precision = "fp32"       # autocast for the model; losses stay float32
    output_dir: str = "runs/model"
    log_every: int = 10                 # optimizer steps between scalar logs
    progress: bool = True
    # checkpoint averaging: at the end, checkpoint_avg.pt holds the mean of the weights of the last `average` epochs
    # (average_of: last) or of the `average` epochs with the best dev WER (average_of: best); 0: off
    average: int = 0
    average_of: Literal["last", "best"] = "last"

    def __post_init__(self):
        _check_choices(self)
        _at_least("train", self, epochs=1, accumulation_steps=1, eval_every=1, log_every=1, warmup_steps=0, average=0)
        if self.patience is not None and (isinstance(self.patience, bool) or not isinstance(self.patience, int)
                                          or self.patience < 1):
            raise OfflineKDError(f"train.patience must be an integer >= 1 or null, got {self.patience!r}")
        if self.lr <= 0:
            raise OfflineKDError(f"train.lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class DistillConfig:
    SECTION: ClassVar[str] = "distill"
    cache: str = "cache/teacher.zarr"
    alpha: float = 0.7                  # soft KL weight
    beta: float = 0.2                   # hard CTC weight
    gamma: float = 0.1                  # feature-matching weight
    # the feature term: mse (projected student layer vs the teacher layer's values) or codebook (per mapped student
    # layer a linear head predicts the index of each codebook of the teacher layer, cross-entropy summed over the
    # codebooks: icefall's MVQ-KD; needs a cache whose mapped layers use the codebook codec, docs/cache-format.md)
    feature_loss: Literal["mse", "codebook"] = "mse"
    seq_weight: float = 0.0             # CTC on the teacher's cached 1-best (sequence-level KD)
    # [[first_epoch, temperature], ...]: T applies from that (1-based) epoch on
    temperature_schedule: list = field(default_factory=lambda: [[1, 4.0], [31, 3.5], [71, 3.0]])
    layer_mapping: dict = field(default_factory=lambda: {2: 2, 3: 4})   # student layer -> teacher layer
    init_checkpoint: Optional[str] = None
    storage_options: dict = field(default_factory=dict)   # fsspec options for a URL cache
    kl_frames: Literal["all", "spikes"] = "all"     # spikes: KL only within spike_context frames of a teacher spike
    spike_context: int = 2              # blank frames kept on each side of a spike (kl_frames: spikes)
    kl_target: Literal["full", "collapsed"] = "full"    # collapsed: KL over (blank, teacher's token, rest) only
    kd_start_epoch: int = 1             # epochs before it train on CTC alone (warm-up off the blank plateau)
    verify_reads: bool = True           # check every cached utterance's crc32 and its features' sha256 on read (cost: docs/benchmarks.md)
    # splits of untranscribed audio (cached like the training split) mixed into training: their CTC target is the
    # teacher's 1-best; each epoch uses a fresh random `untranscribed_fraction` of them
    untranscribed_splits: list = field(default_factory=list)
    untranscribed_fraction: float = 1.0
    # at most this many untranscribed utterances are used at all (the first ones of the splits, in their stored
    # order; null: all): how much untranscribed audio a setting has, from one cache
    untranscribed_limit: Optional[int] = None
    # the CTC-only baseline's run directory (or checkpoint): its dev WER is printed beside the teacher's, with a
    # warning when the baseline is already as good as the teacher
    compare_baseline: Optional[str] = None
    # where cached targets are decoded: host (in the loader, numpy), device (the stored codes travel to the training
    # device and are decoded there: the low-rank bases live on it), auto (device on a GPU, host on a CPU)
    decode_on: Where = "auto"
    # augmented views (docs/views.md): with a cache, its own views are used (these, if given, must equal them);
    # with --online-teacher these are the views, of the training and untranscribed splits, both models see
    views: list = field(default_factory=list)
    view_seed: int = 0
    # the CTC target of untranscribed utterances: greedy (the teacher's greedy 1-best), lm (its N-best from a beam
    # search with an n-gram LM, stored at dump time by dump.lm_targets, each hypothesis weighted by its posterior) or
    # lm_1best (the best of that N-best alone, weight 1). With an LM's labels, confidence_weighting weighs each
    # utterance by the teacher's confidence times the LM 1-best's posterior among the N (docs/usage.md)
    # auto: the LM's labels (AUTO_LM_LABELS) where the cache holds an LM N-best of every untranscribed split, else
    # greedy; the run's saved config records the choice
    pseudo_labels: Literal["auto", "greedy", "lm", "lm_1best"] = "auto"
    # untranscribed utterances whose teacher confidence (the mean posterior of its 1-best's tokens, stored by the
    # dump; cache/confidence.py) is below this are left out (null: all are kept); the share kept is logged
    min_confidence: Optional[float] = None
    # true: the pseudo-label CTC of each untranscribed utterance is weighted by that confidence
    confidence_weighting: bool = False
    # the KL and CTC weights on untranscribed utterances (null: alpha and beta), e.g. more KL and less CTC where
    # the labels are guesses; each must be 0 where alpha / beta is 0
    untranscribed_alpha: Optional[float] = None
    untranscribed_beta: Optional[float] = None
    # > 0: the KL target of every utterance is the teacher's posteriors mixed with this weight with the CTC forced
    # alignment of that utterance's CTC target (its transcript, or its pseudo-label: the LM's 1-best where the LM's
    # labels are used) over those posteriors, so that KL and CTC teach the same words (losses/aligned.py)
    kl_label_mix: float = 0.0

    def __post_init__(self):
        _check_choices(self)
        parse_views(self.views, "distill.views")
        if self.min_confidence is not None and not 0 <= self.min_confidence <= 1:
            raise OfflineKDError(f"distill.min_confidence must be in [0, 1] or null, got {self.min_confidence}")
        for key, base in (("untranscribed_alpha", "alpha"), ("untranscribed_beta", "beta")):
            v = getattr(self, key)
            if v is not None and v < 0:
                raise OfflineKDError(f"distill.{key} must be >= 0 or null, got {v}")
            if v and not getattr(self, base):
                raise OfflineKDError(f"distill.{key} weighs untranscribed utterances relative to distill.{base}, "
                                     f"which is 0: set distill.{base} > 0 (or {key}: 0)")
        sched = self.temperature_schedule
        ok = bool(sched) and all(isinstance(e, (list, tuple)) and len(e) == 2 and isinstance(e[0], int)
                                 and isinstance(e[1], (int, float)) and e[1] > 0 for e in sched)
        if not ok:
            raise OfflineKDError(f"distill.temperature_schedule must be a non-empty list of [first_epoch, T > 0] "
                                 f"pairs, got {sched!r}")
        for k, v in self.layer_mapping.items():
            if not isinstance(k, int) or not isinstance(v, int):
                raise OfflineKDError(f"distill.layer_mapping must map student layer numbers to teacher layer numbers, "
                                     f"got {k!r}: {v!r}")
        for key in ("alpha", "beta", "gamma", "seq_weight"):
            if getattr(self, key) < 0:
                raise OfflineKDError(f"distill.{key} must be >= 0, got {getattr(self, key)}")
        if self.kl_target == "collapsed" and self.kl_frames != "all":
            raise OfflineKDError("distill.kl_target collapsed works on all frames; set distill.kl_frames: all")
        if self.spike_context < 0:
            raise OfflineKDError(f"distill.spike_context must be >= 0, got {self.spike_context}")
        if not 0 <= self.kl_label_mix <= 1:
            raise OfflineKDError(f"distill.kl_label_mix must be in [0, 1], got {self.kl_label_mix}")
        if not all(isinstance(x, str) and x for x in self.untranscribed_splits):
            raise OfflineKDError(f"distill.untranscribed_splits must be a list of split names, "
                                 f"got {self.untranscribed_splits!r}")
        if not 0 < self.untranscribed_fraction <= 1:
            raise OfflineKDError(f"distill.untranscribed_fraction must be in (0, 1], got {self.untranscribed_fraction}")
        if self.untranscribed_limit is not None and (isinstance(self.untranscribed_limit, bool) or not isinstance(
                self.untranscribed_limit, int) or self.untranscribed_limit < 1):
            raise OfflineKDError(f"distill.untranscribed_limit must be an integer >= 1 or null, "
                                 f"got {self.untranscribed_limit!r}")
        if self.untranscribed_limit is not None and not self.untranscribed_splits:
            raise OfflineKDError("distill.untranscribed_limit limits distill.untranscribed_splits, which is empty: "
                                 "name the splits or leave the limit out")
        if self.kd_start_epoch < 1:
            raise OfflineKDError(f"distill.kd_start_epoch must be >= 1 (a 1-based epoch), got {self.kd_start_epoch}")


@dataclass(frozen=True)
class CodecConfig:
    SECTION: ClassVar[str] = "dump.codecs"
    # Each field's codec as its stored spec: a name (`float16`) or a mapping (`{name: topk, k: 8, coverage: 0.999,
    # tail: lowrank, tail_rank: 112}`, the settings of docs/cache-format.md; num_classes / dim are filled in).
    # The flat keys below are the older way to give settings; they still work, with a deprecation message.
    log_probs: Union[str, dict] = "float16"   # float32 | float16 | topk | sampled | lowrank
    logits_rank: int = 32               # coefficients per frame for lowrank log-probs (and topk_tail lowrank)
    logits_coeff: Literal["float16", "int8"] = "int8"   # int8: whitened
    sampled_n: int = 32                 # tokens drawn per frame for sampled
    topk_k: int = 16                    # max k for topk
    topk_coverage: Optional[float] = None  # if set, per-frame k = smallest reaching this probability mass (<= topk_k)
    # how decoding spreads the tail mass over tokens not kept (lowrank: shaped by logits_rank coefficients per frame)
    topk_tail: Literal["uniform", "prior", "lowrank"] = "uniform"
    hidden: Union[str, dict] = "float16"      # float32 | float16 | int8 | lowrank
    lowrank_rank: int = 256             # coefficients per frame and layer for lowrank hidden states
    lowrank_fit_frames: int = 20000     # frames the fitted state (bases, prior) is computed on
    # int8: whitened; step: one fitted quantiser step
    lowrank_coeff: Literal["float16", "int8", "step"] = "float16"
    lowrank_target_error: float = 0.008  # lowrank_coeff step: relative squared error the step is fitted for
    compressor: Literal["zstd", "blosc", "none"] = "zstd"
    level: int = 3

    def __post_init__(self):
        _check_choices(self)

    def field_specs(self, log=print) -> dict:
        """{"log_probs": spec, "hidden": spec}: each field's codec spec as this config gives it (a name or a
        mapping of settings), the deprecated flat keys translated into a spec with a deprecation message."""
        c, defaults, specs = self, CodecConfig(), {}
        for field_name in ("log_probs", "hidden"):
            value = getattr(c, field_name)
            flat = [k for k in FLAT_CODEC_KEYS[field_name] if getattr(c, k) != getattr(defaults, k)]
            if isinstance(value, dict):
                if flat:
                    raise OfflineKDError(f"dump.codecs.{field_name} is a mapping, so give its settings there, not in "
                                         f"{', '.join('dump.codecs.' + k for k in flat)}")
                if "name" not in value:
                    raise OfflineKDError(f"dump.codecs.{field_name}: the mapping needs a 'name' (e.g. "
                                         f"{{name: topk, k: 8}})")
                specs[field_name] = dict(value)
            else:
                specs[field_name] = _flat_codec_spec(c, field_name)
                if flat:
                    shown = ", ".join(f"{k}: {v}" for k, v in specs[field_name].items())
                    log(f"warning: dump.codecs flat keys ({', '.join(flat)}) are deprecated; write "
                        f"codecs.{field_name}: {{{shown}}}")
        return specs



FLAT_CODEC_KEYS = {"log_probs": ("topk_k", "topk_coverage", "topk_tail", "logits_rank", "logits_coeff", "sampled_n"),
             "hidden": ("lowrank_rank", "lowrank_coeff", "lowrank_target_error")}


def _flat_codec_spec(c: CodecConfig, field: str) -> dict:
    """The spec that the older (deprecated) flat keys describe."""
    if field == "log_probs":
        spec = {"name": c.log_probs}
        if c.log_probs == "topk":
            spec.update(k=c.topk_k, coverage=c.topk_coverage, tail=c.topk_tail)
            if c.topk_tail == "lowrank":
                spec.update(tail_rank=c.logits_rank, tail_coeff=c.logits_coeff)
        elif c.log_probs == "sampled":
            spec.update(samples=c.sampled_n)
        elif c.log_probs == "lowrank":
            spec.update(rank=c.logits_rank, coeff=c.logits_coeff)
        return spec
    spec = {"name": c.hidden}
    if c.hidden == "lowrank":
        spec.update(rank=c.lowrank_rank, coeff=c.lowrank_coeff, target_error=c.lowrank_target_error)
    return spec


@dataclass(frozen=True)
class LMTargetsConfig:
    """dump.lm_targets: the teacher's N best hypotheses from a beam search with an n-gram LM, per utterance of the
    named splits (docs/cache-format.md; `distill.pseudo_labels: lm` trains on them)."""
    SECTION: ClassVar[str] = "dump.lm_targets"
    lm: str = ""                        # KenLM model, ARPA or binary
    splits: list = field(default_factory=list)    # dump splits to decode (a split of view_splits: every view)
    nbest: int = 1
    beam_width: int = 32
    alpha: float = 0.5                  # LM weight (tune it on dev first: offline-kd tune-lm)
    beta: float = 1.0                   # word insertion bonus
    num_processes: int = 0              # decoding processes; 0 = one per CPU core

    def __post_init__(self):
        _at_least("dump.lm_targets", self, nbest=1, beam_width=1, num_processes=0)
        if self.beam_width < self.nbest:
            raise OfflineKDError(f"dump.lm_targets.beam_width ({self.beam_width}) must be >= nbest ({self.nbest})")


@dataclass(frozen=True)
class DumpConfig:
    SECTION: ClassVar[str] = "dump"
    # a checkpoint path, {entry_point: "module:function", args: {...}} (a teacher in your own code), or
    # {huggingface: DIR} (a local transformers CTC model), with alignment options (docs/teachers.md); or several
    # as one: [A, B, ...] or {ensemble: [A, B, ...], weights: uniform | dev_wer | [w, ...]} (teachers/ensemble.py)
    teacher: Union[str, dict, list] = "runs/teacher/checkpoint_best.pt"
    # the student's subsampling (input frames per output frame) the targets are cached at; null: the teacher's own.
    # A teacher at another frame rate is pooled or repeated onto it (docs/teachers.md "Alignment")
    subsampling: Optional[int] = None
    corpus: str = "data/demo"
    # a name ending in "?" is cached where the corpus has that split ("untranscribed?"), left out where it has not
    splits: list = field(default_factory=lambda: ["train", "dev"])
    layers: list = field(default_factory=lambda: [2, 4])
    output: str = "cache/teacher.zarr"
    batch_size: int = 32
    max_frames_per_batch: Optional[int] = None
    device: str = "auto"
    precision: Precision = "fp32"       # the teacher's forward pass under autocast
    chunk_frames: int = 512             # frames per zarr chunk (the unit of compression and reading)
    shard_chunks: int = 32              # chunks per shard (the unit of storage objects and of resume)
    skip_invalid: bool = False
    writer_queue: int = 4               # batches in flight between the teacher and the background writer
    num_workers: Union[int, str] = "auto"   # feature-reading processes: auto = none on a CPU, some on a GPU
    # where the codecs encode: host (the writer thread, numpy), device (where the teacher ran; only the codes are
    # copied to the host), auto (device on a GPU, host on a CPU)
    encode_on: Where = "auto"
    progress: bool = True
    codecs: CodecConfig = field(default_factory=CodecConfig)
    storage_options: dict = field(default_factory=dict)
    # augmented views (docs/views.md): every split of view_splits is cached once per view, as split@0, split@1, ...
    # [{speed: 0.9}, {speed: 1.0, time_masks: 2, time_mask_width: 10}, ...]; masks are drawn from (view_seed, view,
    # utterance id)
    views: list = field(default_factory=list)
    view_splits: list = field(default_factory=list)
    view_seed: int = 0
    lm_targets: Optional[LMTargetsConfig] = None
    # a mapped teacher (teachers/coverage.py): the dump refuses student classes that the transcripts use but no
    # teacher class reaches, unless allow_unreached; and a mean share of the teacher's probability on the classes
    # its vocabulary map drops above max_dropped_mass (measured on a sample before anything is written)
    allow_unreached: bool = False
    max_dropped_mass: float = 0.05
    # further per-frame fields computed from the teacher's log-probs, by the names they were registered under
    # (offline_kd.cache.fields.register_field; docs/extending.md)
    fields: list = field(default_factory=list)

    def __post_init__(self):
        _check_choices(self)
        if not all(isinstance(x, str) and x for x in self.fields):
            raise OfflineKDError(f"dump.fields must be a list of registered field names, got {self.fields!r}")
        if self.subsampling is not None and (isinstance(self.subsampling, bool) or not isinstance(self.subsampling, int)
                                             or self.subsampling < 1):
            raise OfflineKDError(f"dump.subsampling must be an integer >= 1 or null, got {self.subsampling!r}")
        parse_views(self.views, "dump.views")
        if not all(isinstance(x, str) and x.rstrip("?") for x in self.splits):
            raise OfflineKDError(f"dump.splits must be a list of split names, got {self.splits!r}")
        if self.lm_targets is not None:
            check_lm_targets(self.lm_targets, split_names(self.splits))
        if self.views and not self.view_splits:
            raise OfflineKDError("dump.views: name the splits to cache through them in dump.view_splits "
                                 "(e.g. [train, untranscribed]; dev stays as it is)")
        if self.view_splits and not self.views:
            raise OfflineKDError("dump.view_splits: give the views themselves in dump.views")
        outside = [s for s in self.view_splits if s not in split_names(self.splits)]
        if outside:
            raise OfflineKDError(f"dump.view_splits: {outside} not in dump.splits {list(self.splits)}")
        _at_least("dump", self, batch_size=1, max_frames_per_batch=1, chunk_frames=1, shard_chunks=1,
                  writer_queue=1)
        if isinstance(self.num_workers, str) and self.num_workers != "auto" or \
                isinstance(self.num_workers, int) and self.num_workers < 0:
            raise OfflineKDError(f"dump.num_workers must be auto or an integer >= 0, got {self.num_workers!r}")
        if isinstance(self.max_dropped_mass, bool) or not isinstance(self.max_dropped_mass, (int, float)) \
                or not 0.0 <= self.max_dropped_mass <= 1.0:
            raise OfflineKDError(f"dump.max_dropped_mass must be a share in [0, 1], got {self.max_dropped_mass!r}")


# ------------------------------------------------------------------------------------------------- top level
@dataclass(frozen=True)
class ExperimentConfig:
    """`offline-kd train` (teacher / CTC-only baseline) and `offline-kd train-student` (with `distill`)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    distill: Optional[DistillConfig] = None


VIEWS_EXCLUDE_MASKS = ("augment.time_masks / freq_masks: with views the student sees exactly the view its teacher "
                       "saw; give the masks in the views (dump.views) and set these to 0")


def validate_experiment(cfg: ExperimentConfig, command: str) -> None:
    """The rules of an experiment config that involve more than one section, for `command` (train |
    train-student); each is a one-line error. Rules that need the corpus or the cache stay with the command."""
    d = cfg.distill
    if command == "train":
        if d is not None:
            raise OfflineKDError("this config has a 'distill' section: use `offline-kd train-student`")
        return
    if command != "train-student":
        raise ValueError(f"validate_experiment: unknown command {command!r}")
    if d is None:
        raise OfflineKDError("the config has no 'distill' section (cache, alpha, beta, gamma, ...); "
                             "for CTC-only training use `offline-kd train`")
    train = [cfg.data.train_split] if isinstance(cfg.data.train_split, str) else list(cfg.data.train_split)
    if len(train) > 1:
        raise OfflineKDError(f"data.train_split: train-student trains on one transcribed split, got "
                             f"{train} (give further audio as distill.untranscribed_splits)")
    if cfg.augment.speed_perturb:
        raise OfflineKDError("augment.speed_perturb changes the number of frames, so the cached teacher targets "
                             "would no longer line up with the student's outputs; cache the teacher on "
                             "speed-perturbed views instead (dump.views: [{speed: 0.9}, {speed: 1.0}, "
                             "{speed: 1.1}], docs/views.md)")
    for name in d.untranscribed_splits:
        for key in ("train_split", "dev_split"):
            if name == getattr(cfg.data, key) or key == "train_split" and name in train:
                raise OfflineKDError(f"distill.untranscribed_splits: '{name}' is data.{key}; give splits of other "
                                     f"audio (training uses its labels, validation never sees untranscribed data)")
    # views given here (with --online-teacher the views; with a cache they must equal the cache's); the views a
    # cache brings are checked against the masks by train-student once it has opened the cache
    if d.views and (cfg.augment.time_masks or cfg.augment.freq_masks):
        raise OfflineKDError(VIEWS_EXCLUDE_MASKS)


@dataclass(frozen=True)
class DumpRootConfig:
    dump: DumpConfig = field(default_factory=DumpConfig)


# ---------------------------------------------------------------------------------------------------- loading
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


@dataclass(frozen=True)
class AblationConfig:
    """`offline-kd ablate`'s config (see offline_kd/distillation/ablation.py)."""
    SECTION: ClassVar[str] = "ablation"
    base: Union[str, dict] = ""                 # a distillation config path (relative to the ablation file) or mapping
    output_dir: str = "runs/ablation"
    parallel: int = 1                           # runs at a time
    grid: dict = field(default_factory=dict)    # dotted key -> list of values (cartesian product)
    runs: list = field(default_factory=list)    # [{name, set: {dotted key: value}}]
    evaluate: list = field(default_factory=lambda: ["dev", "test"])
    lm: Optional[str] = None                    # a KenLM model adds beam-search columns
    lm_alpha: float = 0.5
    lm_beta: float = 1.0

    def __post_init__(self):
        if not self.base:
            raise OfflineKDError("ablation: 'base' (a distillation config) is required")
        _at_least("ablation", self, parallel=1)


def _coerce(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except OfflineKDError as exc:
                errors.append(str(exc))
        raise OfflineKDError(errors[0] if errors else f"{path}: invalid value {value!r}")
    if origin is Literal:
        if _is_choice(value, typing.get_args(tp)):
            return value
        raise _choice_error(path, value, typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise OfflineKDError(f"{path}: expected a mapping, got {type(value).__name__}")
        return build_dataclass(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise OfflineKDError(f"{path}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise OfflineKDError(f"{path}: expected int, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise OfflineKDError(f"{path}: expected float, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise OfflineKDError(f"{path}: expected string, got {value!r}")
    if tp is list or origin is list:
        if isinstance(value, (list, tuple)):
            return list(value)
        raise OfflineKDError(f"{path}: expected a list, got {value!r}")
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise OfflineKDError(f"{path}: expected a mapping, got {value!r}")
    raise OfflineKDError(f"{path}: unsupported type {_type_name(tp)}")


def build_dataclass(cls: type, data: dict, path: str = "") -> Any:
    """Build `cls` from a plain dict, rejecting unknown keys, wrong types and values outside a `Literal[...]`
    (messages carry the key path: `path`, or for a section built on its own its `SECTION`)."""
    path = path or getattr(cls, "SECTION", "")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"{path}.{key}" if path else str(key)
            raise OfflineKDError(f"unknown config key '{where}' (valid keys here: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            where = f"{path}.{f.name}" if path else f.name
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], where)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` -> (["section", "key"], yaml-parsed value)."""
    if "=" not in text:
        raise OfflineKDError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise OfflineKDError(f"--set {key}: cannot parse value {raw!r}: {exc}") from None
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides or []:
        keys, value = parse_override(text)
        set_dotted(data, keys, value)
    return data


def set_dotted(data: dict, keys: list[str], value: Any) -> None:
    """data[k1][k2]... = value, creating sections on the way."""
    node = data
    for k in keys[:-1]:
        if node.get(k) is None:
            node[k] = {}
        if not isinstance(node[k], dict):
            raise OfflineKDError(f"--set {'.'.join(keys)}: '{k}' is not a section")
        node = node[k]
    node[keys[-1]] = value


def shipped_config_dirs() -> list[Path]:
    """Where the configs that ship with offline-kd are: the repository's configs/ beside the package (a clone, an
    editable install), and <prefix>/share/offline-kd/configs (a wheel installs them there, setup.cfg data_files)."""
    here = Path(__file__).resolve().parents[1] / "configs"
    dirs = [here, Path(sys.prefix) / "share" / "offline-kd" / "configs"]
    return [d for d in dirs if d.is_dir()]


def shipped_configs() -> dict[str, Path]:
    """{name: file} of the shipped configs, the name being the path under configs/ without .yaml
    ("teacher_config", "demo/distill"); the first directory of `shipped_config_dirs` wins."""
    out: dict[str, Path] = {}
    for d in shipped_config_dirs():
        for f in sorted(d.rglob("*.yaml")):
            out.setdefault(f.relative_to(d).with_suffix("").as_posix(), f)
    return out


def resolve_config_path(path: str | Path) -> Path:
    """A config file as given, else the shipped config of that name (`--config demo/distill`, with or without
    .yaml or a leading configs/), so that a pip-installed offline-kd finds the configs it ships."""
    p = Path(path)
    if p.is_file():
        return p
    name = p.as_posix().removeprefix("configs/").removesuffix(".yaml")
    found = shipped_configs().get(name)
    if found is None:
        raise OfflineKDError(f"config file not found: {p} (nor a shipped config of that name: `offline-kd config "
                             f"list` lists them)")
    return found


def read_yaml(path: str | Path) -> dict:
    p = resolve_config_path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise OfflineKDError(f"{p}: invalid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise OfflineKDError(f"{p}: top level must be a mapping")
    return data


def load_config(path: str | Path | None, schema: type, overrides: list[str] | None = None):
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides or [])
    try:
        return build_dataclass(schema, data)
    except OfflineKDError as exc:
        where = f"{path}: " if path else ""
        raise OfflineKDError(f"{where}{exc}") from None


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config (after defaults and overrides) beside an output."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


# ------------------------------------------------------------------------------ views (data.views applies them)
_KEYS = ("speed", "time_masks", "time_mask_width", "freq_masks", "freq_mask_width")


@dataclass(frozen=True)
class ViewSpec:
    speed: float = 1.0
    time_masks: int = 0
    time_mask_width: int = 0
    freq_masks: int = 0
    freq_mask_width: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def frames(self, n: int) -> int:
        """Frames of an n-frame utterance in this view."""
        return max(1, int(round(n / self.speed))) if n > 0 else 0


def parse_views(raw, where: str) -> tuple[ViewSpec, ...]:
    """A config's list of views (mappings of _KEYS; a bare number is a speed) -> ViewSpecs; one-line errors."""
    if raw is None:
        return ()
    if not isinstance(raw, (list, tuple)):
        raise OfflineKDError(f"{where}: give a list of views, e.g. [{{speed: 0.9}}, {{speed: 1.0}}, {{speed: 1.1}}]")
    out = []
    for i, v in enumerate(raw):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = {"speed": v}
        if not isinstance(v, dict):
            raise OfflineKDError(f"{where}[{i}]: a view is a mapping of {', '.join(_KEYS)} (or a speed), got {v!r}")
        unknown = sorted(set(v) - set(_KEYS))
        if unknown:
            raise OfflineKDError(f"{where}[{i}]: unknown key(s) {', '.join(unknown)} (a view has {', '.join(_KEYS)})")
        speed = v.get("speed", 1.0)
        if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not 0.5 <= speed <= 2.0:
            raise OfflineKDError(f"{where}[{i}].speed must be a number in [0.5, 2], got {speed!r}")
        ints = {}
        for k in _KEYS[1:]:
            x = v.get(k, 0)
            if isinstance(x, bool) or not isinstance(x, int) or x < 0:
                raise OfflineKDError(f"{where}[{i}].{k} must be an integer >= 0, got {x!r}")
            ints[k] = x
        out.append(ViewSpec(float(speed), **ints))
    return tuple(out)


def split_names(splits: list) -> list[str]:
    """dump.splits without the "?" that marks a split cached only where the corpus has it."""
    return [s.rstrip("?") for s in splits]


def present_splits(cfg: "DumpConfig", have) -> "DumpConfig":
    """`cfg` with its optional splits ("untranscribed?") resolved against the corpus's splits `have`: those it has
    kept (without the "?"), the others left out, of dump.splits, dump.lm_targets.splits and dump.view_splits."""
    keep = [s.rstrip("?") for s in cfg.splits if not s.endswith("?") or s[:-1] in have]
    lm = cfg.lm_targets
    if lm is not None:
        lm_splits = [s for s in lm.splits if s in keep]
        lm = dataclasses.replace(lm, splits=lm_splits) if lm_splits else None
    return dataclasses.replace(cfg, splits=keep, lm_targets=lm,
                               view_splits=[s for s in cfg.view_splits if s in keep])


# --------------------------------------------------------------------- dump.lm_targets (checked with the dump)
def check_lm_targets(cfg, splits: list[str]) -> None:
    """One-line errors for a dump.lm_targets section that cannot work."""
    if not cfg.lm:
        raise OfflineKDError("dump.lm_targets.lm: give the KenLM model (ARPA or binary) to decode with")
    if not cfg.splits:
        raise OfflineKDError("dump.lm_targets.splits: name the splits to decode (e.g. [untranscribed])")
    outside = [s for s in cfg.splits if s not in splits]
    if outside:
        raise OfflineKDError(f"dump.lm_targets.splits: {outside} not in dump.splits {splits}")
