"""Plain helpers shared by the tests (fixtures live in conftest.py): tiny corpora and configs, dump settings,
cache comparison, a simulated kill."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import yaml
import zarr

from offline_kd.cache.reader import TeacherCache
from offline_kd.config import DumpConfig, build_dataclass
from offline_kd.data.synth import SynthSpec

QUIET = dict(log=lambda *_: None)


def dump_cfg(teacher, corpus, out, **kw) -> DumpConfig:
    codecs = kw.pop("codecs", {})
    base = {"teacher": str(teacher), "corpus": str(corpus), "output": str(out), "splits": ["train", "dev"],
            "layers": [1, 3], "batch_size": 8, "chunk_frames": 32, "shard_chunks": 2, "progress": False,
            "device": "cpu", "codecs": {"log_probs": "float32", "hidden": "float32", **codecs}}
    base.update(kw)
    return build_dataclass(DumpConfig, base)


def tiny_spec(**kw) -> SynthSpec:
    """An easy corpus: 16-dim features, 8 word units of 2 phones, clean, 2 speakers."""
    base = dict(seed=3, num_train=96, num_dev=16, num_test=16, feature_dim=16, num_units=8, num_phones=8,
                phones_per_unit=1, num_speakers=2, test_speakers=0, min_words=2, max_words=4,
                snr_db=(30.0, 40.0), speaker_distortion=0.05)
    base.update(kw)
    return SynthSpec(**base)


def experiment_dict(corpus: Path, out: Path, hidden=24, layers=2, epochs=3, batch_size=8, **train) -> dict:
    return {
        "data": {"corpus": str(corpus), "batch_size": batch_size, "num_buckets": 2},
        "model": {"input_dim": 16, "hidden_dim": hidden, "num_layers": layers, "num_classes": 9, "dropout": 0.0},
        "train": {"epochs": epochs, "lr": 0.01, "output_dir": str(out), "progress": False, "log_every": 1,
                  "seed": 0, **train},
    }


def step_records(run_dir: Path) -> list[dict]:
    """The per-step records of a run's metrics.jsonl."""
    import json
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["event"] == "step"]


def offline_and_online_steps(off_cfg, on_cfg, teacher) -> tuple[list[dict], list[dict]]:
    """Train one student from the cache and one from the live teacher; their step records."""
    from offline_kd.commands import train_student
    train_student.run(off_cfg, **QUIET)
    train_student.run(on_cfg, online_teacher=str(teacher), **QUIET)
    return step_records(off_cfg.train.output_dir), step_records(on_cfg.train.output_dir)


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def student_dict(corpus, cache, out, epochs=2, **distill):
    d = experiment_dict(corpus, out, hidden=16, layers=2, epochs=epochs, batch_size=8)
    d["distill"] = {"cache": str(cache), "layer_mapping": {1: 1, 2: 3}, "alpha": 0.7, "beta": 0.2, "gamma": 0.1,
                    "seq_weight": 0.1, **distill}
    return d


CODECS = {
    "float32": {"log_probs": "float32", "hidden": "float32"},
    "float16": {"log_probs": "float16", "hidden": "float16"},
    "topk-uniform+int8": {"log_probs": "topk", "topk_k": 4, "hidden": "int8"},
    "topk-prior+lowrank-int8": {"log_probs": "topk", "topk_k": 3, "topk_coverage": 0.99, "topk_tail": "prior",
                                "hidden": "lowrank", "lowrank_rank": 16, "lowrank_coeff": "int8",
                                "lowrank_fit_frames": 300},
    "topk-lowrank+lowrank-step": {"log_probs": "topk", "topk_k": 3, "topk_coverage": 0.99, "topk_tail": "lowrank",
                                  "logits_rank": 6, "hidden": "lowrank", "lowrank_rank": 64, "lowrank_coeff": "step",
                                  "lowrank_target_error": 0.01, "lowrank_fit_frames": 300},
    "lowrank-float16+lowrank-float16": {"log_probs": "lowrank", "logits_rank": 6, "logits_coeff": "float16",
                                        "hidden": "lowrank", "lowrank_rank": 16, "lowrank_coeff": "float16",
                                        "lowrank_fit_frames": 300},
    "sampled+float16": {"log_probs": "sampled", "sampled_n": 16, "hidden": "float16"},
}


def cache_arrays(path):
    root = zarr.open_group(str(path), mode="r")
    out = {}
    for split in ("train", "dev"):
        for name, node in root[split].members(max_depth=None):
            if hasattr(node, "shape"):
                out[f"{split}/{name}"] = node[:]
    return out


def assert_same_cache(a, b) -> None:
    """Every stored array of the two caches is equal, and the second one is complete."""
    x, y = cache_arrays(a), cache_arrays(b)
    assert x.keys() == y.keys()
    for k in x:
        np.testing.assert_array_equal(x[k], y[k], err_msg=k)
    assert TeacherCache(str(b)).meta.complete



class Killed(BaseException):
    """Stands for SIGKILL at a chosen point (BaseException: no `except Exception` swallows it)."""


def killed_after(run_fn, cfg, epochs_done):
    """Run training, stopping (as if killed) right after `epochs_done` epochs were checkpointed."""
    from offline_kd.training import trainer as tr
    orig = tr.Trainer._epoch

    def epoch(self, e):
        if e > epochs_done:
            raise Killed()
        return orig(self, e)

    tr.Trainer._epoch = epoch
    try:
        run_fn(cfg, **QUIET)
    except Killed:
        pass
    finally:
        tr.Trainer._epoch = orig


def find_tool(name: str) -> str | None:
    """A command on PATH or beside this interpreter (scripts/setup.sh installs lmplz into .venv/bin, which is not
    on PATH when the tests run as `.venv/bin/python -m pytest` without activating the environment)."""
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


def write_unigram_arpa(path: Path, words: list[str], bigram: tuple[str, str] | None = None) -> Path:
    """A real ARPA model over `words` (uniform unigrams, optionally one likely bigram), for KenLM in the tests."""
    lines = ["", "\\data\\", f"ngram 1={len(words) + 3}", f"ngram 2={1 if bigram else 0}", "", "\\1-grams:",
             "-99\t<s>\t-0.3", "-1.0\t</s>", "-3.0\t<unk>"]
    lines += [f"-1.0\t{w}\t-0.3" for w in words]
    if bigram:
        lines += ["", "\\2-grams:", f"-0.2\t{bigram[0]} {bigram[1]}"]
    lines += ["", "\\end\\", ""]
    Path(path).write_text("\n".join(lines))
    return Path(path)
