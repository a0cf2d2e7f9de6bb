"""Train-step and inference speed of each model type against the BiLSTM, at the sizes of a study (CPU or GPU).

    python benchmarks/model_speed.py --input-dim 512 --classes 201 --frames 400 --batch 16 --runs 7 \
        --model bilstm:hidden_dim=64 --model conformer:hidden_dim=64,num_heads=4,subsampling_channels=4,conv_kernel=15

Each model (4 layers unless num_layers is given, 2x subsampling unless given) runs on the same random batch of
`--batch` utterances of `--frames` frames: a train step (forward, CTC loss, backward, AdamW step) and an inference
forward (no_grad, eval mode), timed `--runs` times in turn with the other models after one warm-up; the table gives
medians and the ratio to the first model's, measured side by side in one process.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from _common import Timer, command_line, machine, median, write_section
from offline_kd.config import ModelConfig
from offline_kd.models.interface import build_model, count_parameters


def parse(spec: str, args) -> tuple[str, ModelConfig]:
    kind, _, rest = spec.partition(":")
    kw = {"type": kind, "input_dim": args.input_dim, "num_classes": args.classes, "num_layers": 4, "dropout": 0.1}
    for item in filter(None, rest.split(",")):
        k, v = item.split("=")
        kw[k] = int(v)
    return spec, ModelConfig(**kw)


def step_fns(model, x, lengths, labels, label_lengths):
    """(a train step, an inference forward) of `model` on the batch."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step():
        model.train()
        lp, n = model(x, lengths)
        F.ctc_loss(lp, labels, n, label_lengths, zero_infinity=True).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def infer():
        model.eval()
        with torch.no_grad():
            model(x, lengths)
    return step, infer


def interleaved(fns: list, runs: int) -> list[float]:
    """The median time of each of `fns`, timed in turn (model 1, model 2, ..., then again) after one warm-up each,
    so that a change of the machine's load reaches every model alike."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(runs):
        for k, fn in enumerate(fns):
            with Timer() as t:
                fn()
            times[k].append(t.seconds)
    return [median(ts) for ts in times]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", required=True, help="TYPE:key=value,... (the first is the reference)")
    ap.add_argument("--input-dim", type=int, default=512)
    ap.add_argument("--classes", type=int, default=201)
    ap.add_argument("--frames", type=int, default=400)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--note", default="the machine otherwise idle", help="what else ran on the machine meanwhile")
    ap.add_argument("--section", default="model-speed")
    ap.add_argument("--title", default="Model types: train-step and inference speed against the BiLSTM")
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.frames, args.input_dim)
    lengths = torch.linspace(args.frames // 2, args.frames, args.batch).long().flip(0)
    label_lengths = torch.full((args.batch,), 20)
    labels = torch.randint(1, args.classes, (int(label_lengths.sum()),))
    models = [build_model(parse(spec, args)[1]) for spec in args.model]
    fns = [step_fns(m, x, lengths, labels, label_lengths) for m in models]
    train_t = interleaved([f[0] for f in fns], args.runs)
    infer_t = interleaved([f[1] for f in fns], args.runs)
    rows = [(m.summary(), count_parameters(m), a, b) for m, a, b in zip(models, train_t, infer_t)]
    print(rows, flush=True)
    ref = rows[0]
    lines = [f"## {args.title}", "", f"`{command_line()}`", "", f"Machine: {machine()}. A batch of {args.batch} "
             f"utterances of {args.frames // 2}..{args.frames} frames ({args.input_dim}-dim, {args.classes} classes); "
             f"medians of {args.runs} runs after a warm-up; ratio = the reference's time / this model's (above 1: "
             f"faster); {args.note}.", "",
             "| model | parameters | train step (s) | ratio | inference (s) | ratio |", "|---|---|---|---|---|---|"]
    for summary, params, train, infer in rows:
        lines.append(f"| {summary} | {params:,} | {train:.3f} | {ref[2] / train:.2f}x | {infer:.3f} | "
                     f"{ref[3] / infer:.2f}x |")
    write_section(args.section, "\n".join(lines))


if __name__ == "__main__":
    main()
