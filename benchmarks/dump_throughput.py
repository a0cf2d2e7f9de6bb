"""Dump throughput vs teacher inference alone, on the same batches (issue: dump >= 0.95x inference).

    python benchmarks/dump_throughput.py --teacher runs/seed/teacher/checkpoint_best.pt --corpus data/seed \
        --split dev --runs 3

Each run measures, side by side: (a) the teacher's forward passes over the dump plan's batches, outputs moved to
host memory (what any consumer needs), nothing stored; (b) a full `dump-teacher` of the same split with the given
codecs into a fresh temporary cache (one dump per `--codecs`, repeatable; `default` = configs/dump_config.yaml's
codecs, whose dump includes fitting their bases). Reports the median frames/s of each and their ratios.
`--encode-on device` (or `both`) dumps with `dump.encode_on: device` (the codecs encode where the teacher ran, the
default on a GPU); rows are marked `@device`.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np

from _common import Timer, command_line, machine, median, write_section
from offline_kd.config import DumpConfig, build_dataclass
from offline_kd.data.corpus import Corpus
from offline_kd.commands import dump_teacher
from offline_kd.models.checkpoint import model_from_checkpoint
from offline_kd.runtime.loaders import iterate_outputs, loader_for, resolve_device, sorted_batches


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--split", default="dev")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--codecs", action="append", default=None,
                    help="key=value,... codec settings, 'default', or a dump config file whose codecs to use "
                         "(e.g. configs/dump_config_1pct.yaml; repeatable; default: float16)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--section", default="dump-throughput", help="section of docs/benchmarks.md to write")
    ap.add_argument("--encode-on", choices=["host", "device", "both"], default="host")
    args = ap.parse_args()
    import yaml
    default = yaml.safe_load((Path(__file__).resolve().parent.parent / "configs" / "dump_config.yaml").read_text())
    specs = {}
    where = {"host": [""], "device": ["@device"], "both": ["", "@device"]}[args.encode_on]
    for spec in args.codecs or ["log_probs=float16,hidden=float16"]:
        for w in where:
            specs[spec + w] = (default["dump"]["codecs"] if spec == "default" else
                               yaml.safe_load(Path(spec).read_text())["dump"]["codecs"] if spec.endswith(".yaml") else
                               {k: yaml.safe_load(v) for k, v in (kv.split("=") for kv in spec.split(","))})
    device = resolve_device(args.device)
    model, vocab, _ = model_from_checkpoint(args.teacher, device)
    reader = Corpus(args.corpus).split(args.split)
    batches = sorted_batches(reader, np.arange(len(reader)), args.batch_size, None)
    frames = int(sum((reader.lengths + 1) // 2))
    infer, dump, fits = [], {s: [] for s in specs}, {s: [] for s in specs}
    for r in range(args.runs):
        with Timer() as t:
            for _, lp, _, hidden in iterate_outputs(model, loader_for(reader, vocab, batches), device, [2, 4]):
                lp.cpu().numpy()
                [h.cpu().numpy() for h in hidden.values()]
        infer.append(frames / t.seconds)
        for spec, codecs in specs.items():
            tmp = Path(tempfile.mkdtemp())
            cfg = build_dataclass(DumpConfig, {"teacher": args.teacher, "corpus": args.corpus,
                                               "splits": [args.split], "output": str(tmp / "c.zarr"),
                                               "batch_size": args.batch_size, "progress": False,
                                               "device": args.device, "codecs": codecs,
                                               "encode_on": "device" if spec.endswith("@device") else "host"})
            with Timer() as t:
                res = dump_teacher.run(cfg, log=lambda *_: None)
            dump[spec].append(frames / t.seconds)
            fits[spec].append((t.seconds, res["fit_seconds"]))
            shutil.rmtree(tmp)
        print(f"run {r + 1}: inference {infer[-1]:.0f} frames/s, "
              + ", ".join(f"dump {s} {d[-1]:.0f} frames/s" for s, d in dump.items()))
    label = lambda s: "configs/dump_config.yaml" + s[len("default"):] if s.startswith("default") else s  # noqa: E731
    # the codecs' fitting (k-means, PCA on the fit sample) is a fixed cost, whatever the corpus's size: the rate
    # without it is what a dump of a large corpus approaches
    steady = {s: [frames / (w - f) for w, f in fits[s]] for s in specs}
    rows = "".join(f"| dump-teacher, {label(s)} | {median(d):.0f} | "
                   f"{median(d) / median(infer):.3f} | {median([f for _, f in fits[s]]):.1f} | "
                   f"{median(steady[s]):.0f} | {median(steady[s]) / median(infer):.3f} | "
                   f"{', '.join(f'{x:.0f}' for x in d)} |\n"
                   for s, d in dump.items())
    body = (f"## Dump throughput vs teacher inference alone\n\n`{command_line()}`\n\n"
            f"Machine: {machine()}. Teacher: {model.config.num_layers} x BiLSTM({model.config.hidden_dim}), "
            f"V = {model.config.num_classes}; split `{args.split}`, {len(reader)} utterances, {frames} output frames; "
            f"layers 2 and 4. Median of {args.runs} interleaved runs (frames = teacher output frames; the dump time "
            f"includes planning, hashing, fitting any codec state, encoding, compression and writing; `codec fit` is "
            f"the part of it spent fitting codec state on the fit sample (k-means, PCA: a fixed cost whatever the "
            f"corpus's size, so a larger corpus's dump approaches the rate without it). Codecs: "
            + "; ".join(f"`{s}` = {c}" for s, c in specs.items()) + ".\n\n"
            f"| | frames/s (median) | vs inference | codec fit s (median) | frames/s without the fit | vs inference "
            f"| runs (frames/s) |\n|---|---|---|---|---|---|---|\n"
            f"| teacher inference alone | {median(infer):.0f} | 1.000 | | | | {', '.join(f'{x:.0f}' for x in infer)} |\n"
            + rows + "\nGoal: dump >= 0.95x inference" + (
                "; the 1% preset's dump >= 0.9x the float16 dump's (#30), whole dump / without the codec fit: "
                + ", ".join(f"{label(s)}: {median(d) / median(dump[f16]):.3f}x / "
                            f"{median(steady[s]) / median(steady[f16]):.3f}x" for s, d in dump.items() if s != f16)
                if (f16 := next((s for s in dump if s == "log_probs=float16,hidden=float16"), None)) and len(dump) > 1
                else "") + ".\n")
    write_section(args.section, body)


if __name__ == "__main__":
    main()
