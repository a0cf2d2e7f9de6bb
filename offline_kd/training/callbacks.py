"""What the Trainer does around its steps, as callbacks (rank 0's logs; every rank's early stop):

  - `MetricsLog`: metrics.jsonl, one JSON record per logged step, epoch and event;
  - `TensorBoardLog`: the same scalars in train.output_dir/tensorboard;
  - `EarlyStopping`: train.patience dev evaluations without a new best end the run;
  - `ReferenceComparison`: the teacher's dev figures printed beside the student's, and a warning once the student
    has passed them;
  - `CheckpointAveraging`: train.average > 0: the mean of the last (or best) N epochs' weights, checkpoint_avg.pt.

A callback implements any of `on_fit_start(trainer, resumed)`, `log(record, scalars)`, `epoch_message(dev)`,
`on_epoch_end(trainer, epoch, dev)`, `should_stop(trainer)`, `on_fit_end(trainer)` and `close()`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm


class Callback:
    def on_fit_start(self, trainer, resumed: bool) -> None:
        pass

    def log(self, record: dict, scalars: Optional[dict]) -> None:
        pass

    def epoch_message(self, dev: Optional[dict]) -> str:
        return ""

    def on_epoch_end(self, trainer, epoch: int, dev: Optional[dict]) -> None:
        pass

    def should_stop(self, trainer) -> bool:
        return False

    def on_fit_end(self, trainer) -> None:
        pass

    def close(self) -> None:
        pass


class MetricsLog(Callback):
    """Appends every record to metrics.jsonl (a fresh run starts it empty)."""

    def __init__(self, out: Path):
        self.path = Path(out) / "metrics.jsonl"

    def on_fit_start(self, trainer, resumed):
        if not resumed:
            self.path.unlink(missing_ok=True)

    def log(self, record, scalars):
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


class TensorBoardLog(Callback):
    """The records' scalars as TensorBoard scalars at the trainer's step."""

    def __init__(self, out: Path):
        self.out, self.writer, self.trainer = Path(out), None, None

    def on_fit_start(self, trainer, resumed):
        from torch.utils.tensorboard import SummaryWriter
        self.writer, self.trainer = SummaryWriter(str(self.out / "tensorboard")), trainer

    def log(self, record, scalars):
        if self.writer is not None and scalars:
            for k, v in scalars.items():
                self.writer.add_scalar(k, v, self.trainer.step)

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class EarlyStopping(Callback):
    """Stops after `patience` dev evaluations in a row without a new best (the trainer counts them in
    `since_best`, saved in checkpoints); warns at the start when the LR warm-up outlasts that window."""

    def __init__(self, patience: Optional[int], is_main: bool):
        self.patience, self.is_main = patience, is_main

    def on_fit_start(self, trainer, resumed):
        cfg, p = trainer.cfg.train, self.patience
        window = (p or 0) * cfg.eval_every * trainer.steps_per_epoch
        if self.is_main and p and cfg.warmup_steps > window:
            tqdm.write(f"warning: train.warmup_steps ({cfg.warmup_steps}) outlasts the early-stopping window "
                       f"(train.patience {p} x eval_every {cfg.eval_every} epoch(s) x "
                       f"{trainer.steps_per_epoch} steps = {window} steps): the run may stop while the learning rate "
                       f"is still warming up; lower train.warmup_steps (e.g. {max(window // 2, 1)}) or raise "
                       f"train.patience", file=sys.stderr)

    def should_stop(self, trainer) -> bool:
        return bool(self.patience) and trainer.since_best >= self.patience

    def on_epoch_end(self, trainer, epoch, dev):
        if self.should_stop(trainer) and epoch < trainer.cfg.train.epochs:
            trainer.log_record({"event": "early_stop", "epoch": epoch, "best_wer": trainer.best_wer,
                                "patience": self.patience})
            if self.is_main:
                tqdm.write(f"early stop after epoch {epoch} of at most {trainer.cfg.train.epochs}: {self.patience} "
                           f"dev evaluation(s) without a new best (best dev WER {trainer.best_wer:.2f}%)")


class ReferenceComparison(Callback):
    """{"name", "wer", "cer"} (the teacher's dev figures) beside each dev evaluation, with a warning the first time
    the model's dev WER passes them."""

    def __init__(self, reference: Optional[dict]):
        self.ref, self.passed = reference, False

    def epoch_message(self, dev):
        if not self.ref or dev is None:
            return ""
        return f" ({self.ref['name']} {self.ref['wer']:.2f}% / {self.ref['cer']:.2f}%)"

    def on_epoch_end(self, trainer, epoch, dev):
        ref = self.ref
        if trainer.is_main and ref and dev is not None and dev["wer"] < ref["wer"] and not self.passed:
            self.passed = True
            tqdm.write(f"warning: dev WER {dev['wer']:.2f}% has passed the {ref['name']}'s {ref['wer']:.2f}%: "
                       f"a distilled student converges towards its teacher, so the teacher now holds it back "
                       f"(train the teacher longer, or lower the distillation weights)")


class CheckpointAveraging(Callback):
    """train.average N: each epoch's weights are kept (rank 0, `average/epoch-E.pt`, weights only) while they are
    among the last N (average_of last) or the N of lowest dev WER, ties to the later epoch (average_of best: epochs
    with a dev evaluation only); at the end `checkpoint_avg.pt` holds their mean (icefall's model averaging),
    evaluated on dev and logged as an `average` record. A resumed run finds the kept weights on disk."""

    def __init__(self, n: int, of: str, out: Path, is_main: bool):
        self.n, self.of, self.dir, self.is_main = n, of, Path(out) / "average", is_main

    def _kept(self) -> list[dict]:
        path = self.dir / "kept.json"
        return json.loads(path.read_text()) if path.is_file() else []

    def on_epoch_end(self, trainer, epoch, dev):
        if not self.is_main or (self.of == "best" and dev is None):
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        kept = [k for k in self._kept() if k["epoch"] < epoch]          # (a resumed epoch replaces its own)
        kept.append({"epoch": epoch, "wer": None if dev is None else dev["wer"]})
        if self.of == "best":
            kept.sort(key=lambda k: (k["wer"], -k["epoch"]))
        else:
            kept.sort(key=lambda k: -k["epoch"])
        torch.save(trainer.model.state_dict(), self.dir / f"epoch-{epoch}.pt")
        for k in kept[self.n:]:
            (self.dir / f"epoch-{k['epoch']}.pt").unlink(missing_ok=True)
        tmp = self.dir / "kept.json.partial"
        tmp.write_text(json.dumps(kept[:self.n]))
        tmp.replace(self.dir / "kept.json")

    def on_fit_end(self, trainer) -> None:
        if not self.is_main:
            return
        kept = sorted(k["epoch"] for k in self._kept())
        if not kept:
            return
        trainer.write_average(kept, [self.dir / f"epoch-{e}.pt" for e in kept])
