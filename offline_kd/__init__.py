"""offline-kd: run a CTC teacher once, cache its outputs in Zarr v3, distil students from the cache.

The Python front door is `offline_kd.api` (docs/library.md); its names are importable from here (`from offline_kd
import TeacherCache, DistillationLoss, load_model`), loaded on first use so that `import offline_kd` (and the
command line's start) stays light.
"""

import importlib

__version__ = "0.1.0"

_API = ("CacheSplit", "Corpus", "CodebookCE", "CollapsedKL", "CTCTerm", "DistillationLoss", "DumpResult", "Evaluation",
        "ExportResult", "FeatureMSE", "LossInputs", "LossTerm", "SequenceCTC", "SoftKL", "SpeechModel", "SpikeKL",
        "StudentRun", "TeacherCache", "TeacherFrames", "TeacherTargets", "TrainResult", "Transcript", "Word",
        "build_student_run", "collate_frames", "dump_teacher", "evaluate", "export_model", "fit", "load_model",
        "student_run", "train", "train_student")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module("offline_kd.api"), name)
    raise AttributeError(f"module 'offline_kd' has no attribute {name!r}")
