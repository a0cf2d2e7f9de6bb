"""offline-kd from Python: what `from offline_kd import ...` offers (docs/library.md).

The workflow, one call each (a config is a YAML path, a shipped config's name, a mapping, or a config object;
`overrides` are `key=value` strings as `--set` takes them):

    from offline_kd import train, dump_teacher, train_student, evaluate
    teacher = train("configs/demo/teacher.yaml", overrides=["train.output_dir=runs/t"])     # -> TrainResult
    cache = dump_teacher("configs/demo/dump.yaml", overrides=[f"dump.teacher={teacher.best_checkpoint}"])
    student = train_student("configs/demo/distill.yaml")                                    # -> TrainResult
    evaluate(student.best_checkpoint, "test").wer                                           # -> Evaluation

The cache and the loss inside your own loop:

    split = TeacherCache("cache/demo_teacher.zarr").split("train")
    frames = split.targets("utt_000001")              # TeacherFrames, joined by utterance id
    teacher = collate_frames([split.targets(u) for u in ids])
    loss, terms = DistillationLoss([SpikeKL(0.3), CTCTerm(1.0)])(log_probs, lengths, teacher, labels, label_lengths)

The student: `load_model(ckpt).transcribe(["a.wav"])`, `export_model(ckpt, "exported", fmt="onnx")`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from offline_kd.cache.reader import CacheSplit, TeacherCache
from offline_kd.commands import dump_teacher as _dump_command
from offline_kd.commands import train as _train_command
from offline_kd.commands import train_student as _student_command
from offline_kd.config import (DumpConfig, DumpRootConfig, ExperimentConfig, apply_overrides, build_dataclass,
                               load_config, to_dict)
from offline_kd.data.corpus import Corpus
from offline_kd.data.targets import TeacherFrames, TeacherTargets, collate_frames
from offline_kd.distillation.student import StudentRun, build_student_run, fit
from offline_kd.errors import OfflineKDError
from offline_kd.inference.export import ExportResult, export_model
from offline_kd.inference.model import SpeechModel, Transcript, load_model
from offline_kd.inference.timing import Word
from offline_kd.losses.terms import (CodebookCE, CollapsedKL, CTCTerm, DistillationLoss, FeatureMSE, LossInputs,
                                     LossTerm, SequenceCTC, SoftKL, SpikeKL)
from offline_kd.runtime import distributed
from offline_kd.training import evaluation as _evaluation

__all__ = ["CacheSplit", "Corpus", "CodebookCE", "CollapsedKL", "CTCTerm", "DistillationLoss", "DumpResult", "Evaluation",
           "ExportResult", "FeatureMSE", "LossInputs", "LossTerm", "SequenceCTC", "SoftKL", "SpeechModel", "SpikeKL",
           "StudentRun", "TeacherCache", "TeacherFrames", "TeacherTargets", "TrainResult", "Transcript", "Word",
           "build_student_run", "collate_frames", "dump_teacher", "evaluate", "export_model", "fit", "load_model",
           "student_run", "train", "train_student"]


@dataclass(frozen=True)
class TrainResult:
    """A finished `train` / `train_student` run."""
    output_dir: str
    best_dev_wer: float

    @property
    def best_checkpoint(self) -> str:
        return str(Path(self.output_dir) / "checkpoint_best.pt")

    @property
    def last_checkpoint(self) -> str:
        return str(Path(self.output_dir) / "checkpoint_last.pt")


@dataclass(frozen=True)
class DumpResult:
    """A finished (or resumed, or extended) dump."""
    cache: str
    resumed: bool
    frames_written: int
    utterances_written: int
    seconds: float
    fit_seconds: float = 0.0
    world_size: int = 1


@dataclass(frozen=True)
class Evaluation:
    """WER/CER (%) of a checkpoint on a split with the chosen decoder (`greedy_*`: the greedy figures beside a beam
    search, with compare_greedy); `details` holds everything `offline-kd evaluate` prints."""
    checkpoint: str
    split: str
    num_utterances: int
    wer: float
    cer: float
    details: dict


def _config(config: Any, schema: type, overrides: Sequence[str], where: str):
    """A config object of `schema` from a path / shipped name, a mapping or an object, with `overrides`."""
    if isinstance(config, (str, Path)):
        return load_config(config, schema, list(overrides))
    if isinstance(config, dict):
        return build_dataclass(schema, apply_overrides(dict(config), list(overrides)))
    if isinstance(config, schema):
        return build_dataclass(schema, apply_overrides(to_dict(config), list(overrides))) if overrides else config
    raise OfflineKDError(f"{where}: config must be a YAML path, a shipped config's name, a mapping or a "
                         f"{schema.__name__}, not {type(config).__name__}")


def _typed(cls, out: dict):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in out.items() if k in names})


def train(config: Any, *, overrides: Sequence[str] = (), resume: bool = False,
          log: Callable[[str], None] = print) -> TrainResult:
    """Train a CTC model (a teacher, or the CTC-only baseline) as `offline-kd train` does."""
    cfg = _config(config, ExperimentConfig, overrides, "train")
    return _typed(TrainResult, _train_command.run(cfg, resume=resume, log=log))


def train_student(config: Any, *, overrides: Sequence[str] = (), resume: bool = False,
                  online_teacher: Optional[str] = None, log: Callable[[str], None] = print) -> TrainResult:
    """Distil a student from the teacher cache as `offline-kd train-student` does (`online_teacher`: the targets
    from this live teacher instead, for comparison)."""
    cfg = _config(config, ExperimentConfig, overrides, "train_student")
    return _typed(TrainResult, _student_command.run(cfg, resume=resume, online_teacher=online_teacher, log=log))


def dump_teacher(config: Any, *, overrides: Sequence[str] = (), overwrite: bool = False,
                 log: Callable[[str], None] = print) -> DumpResult:
    """Run the teacher once over the corpus into the cache, as `offline-kd dump-teacher` does (a `DumpConfig` or
    a config with a `dump` section)."""
    if isinstance(config, DumpConfig):
        cfg = _config({"dump": to_dict(config)}, DumpRootConfig, overrides, "dump_teacher").dump
    else:
        cfg = _config(config, DumpRootConfig, overrides, "dump_teacher").dump
    return _typed(DumpResult, _dump_command.run(cfg, overwrite=overwrite, log=log))


def evaluate(checkpoint: str, split: str, *, corpus: Optional[str] = None, decoder: str = "greedy",
             lm: Optional[str] = None, device: str = "auto", log: Callable[[str], None] = print,
             **options) -> Evaluation:
    """WER/CER of `checkpoint` on `split` of its corpus (or `corpus`), greedy or `decoder="beam"` with `lm`
    (options: alpha, beta, beam_width, batch_size, compare_greedy, skip_invalid, num_processes)."""
    out = _evaluation.run(checkpoint, split, corpus_dir=corpus, device=device, decoder=decoder, lm=lm, log=log,
                          **options)
    return Evaluation(str(out.get("checkpoint", checkpoint)), str(out.get("split", split)),
                      int(out["num_utterances"]), float(out["wer"]), float(out["cer"]), dict(out))


def student_run(config: Any, *, overrides: Sequence[str] = (), device: str = "auto",
                log: Callable[[str], None] = print) -> StudentRun:
    """The pieces `train_student` trains with (student, loss, batch dataset and sampler over the cache, dev split),
    checked and assembled in this process, for a loop of your own: `fit(run)` is offline-kd's."""
    cfg = _config(config, ExperimentConfig, overrides, "student_run")
    env, dev = distributed.setup(device if device != "auto" else cfg.train.device)
    return build_student_run(cfg, env, dev, log)
