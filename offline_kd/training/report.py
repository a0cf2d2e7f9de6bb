"""The report (`offline-kd report`): compare trained runs (teacher, baseline, students) in one Markdown table with plots.

For every run directory it evaluates the best checkpoint on a split (greedy, plus beam search when an LM is
given), reads the run's metrics.jsonl, and writes `report.md`, `results.json`, `curves.png` (every loss term and
dev WER per epoch) and `wer.png` (a bar chart) into `--out`.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from offline_kd.errors import OfflineKDError
from offline_kd.training import evaluation as evaluate
from offline_kd.data.corpus import Corpus
from offline_kd.data.splits import open_split
from offline_kd.models.checkpoint import model_from_checkpoint
from offline_kd.runtime import loaders as inference
from offline_kd.training import lm_tuning as tune_lm


def _checkpoint(run: Path) -> Path:
    for name in ("checkpoint_best.pt", "checkpoint_last.pt"):
        if (run / name).is_file():
            return run / name
    raise OfflineKDError(f"{run}: no checkpoint_best.pt or checkpoint_last.pt")


def _epochs(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("event") == "epoch"]


def _kind(run: Path) -> str:
    cfg = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    return "distilled" if cfg and cfg.get("distill") else "CTC"


def markdown_table(rows: list[dict], with_beam: bool) -> str:
    head = ["run", "type", "params", "size MB", "WER greedy", "CER greedy"]
    tuned = with_beam and any("alpha" in r for r in rows)
    if with_beam:
        head += ["WER beam", "CER beam"] + (["alpha", "beta"] if tuned else [])
    head += ["best epoch", "decode frames/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["name"], r["type"], f"{r['num_parameters']:,}", f"{r['model_size_mb']:.1f}",
                 f"{r['wer']:.2f}", f"{r['cer']:.2f}"]
        if with_beam:
            cells += [f"{r.get('beam_wer', float('nan')):.2f}", f"{r.get('beam_cer', float('nan')):.2f}"]
            if tuned:
                cells += [f"{r['alpha']:g}", f"{r['beta']:g}"]
        cells += [str(r.get("best_epoch", "")), f"{r['frames_per_second']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


RUN_STYLES = ["-", "--", ":", "-."]


def run_styles(names: list[str]) -> dict[str, dict]:
    """One colour and line style per run, the same in every panel and figure."""
    import matplotlib
    colours = matplotlib.colormaps["tab10"].colors
    return {n: {"color": colours[i % len(colours)], "linestyle": RUN_STYLES[i % len(RUN_STYLES)]}
            for i, n in enumerate(names)}


def curves_figure(curves: dict[str, list[dict]]):
    """A panel per logged loss term and one for dev WER; each run keeps its colour and style everywhere, each
    panel has its own legend (the runs it shows) and names the runs that have no data there."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    styles = run_styles(list(curves))
    terms = sorted({k for eps in curves.values() for e in eps for k in e if k.startswith("train_")})
    panels = terms + ["dev_wer"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False)
    for ax, term in zip(axes[0], panels):
        missing = []
        for name, eps in curves.items():
            pts = [(e["epoch"], e[term]) for e in eps if term in e]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=name, **styles[name])
            else:
                missing.append(name)
        ax.set_title(term.replace("train_", "train loss: ") if term != "dev_wer" else "dev WER (%)")
        ax.set_xlabel("epoch")
        if ax.get_lines():
            ax.legend(fontsize=7)
        if missing:
            ax.text(0.02, 0.02, "no data: " + ", ".join(missing), transform=ax.transAxes, fontsize=7,
                    color="0.35", va="bottom")
    fig.tight_layout()
    return fig


def _plots(rows: list[dict], curves: dict[str, list[dict]], out: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = curves_figure(curves)
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(rows), 3.2))
    names = [r["name"] for r in rows]
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["wer"] for r in rows], width=0.4, label="greedy")
    if any("beam_wer" in r for r in rows):
        ax.bar([i + 0.2 for i in x], [r.get("beam_wer", 0) for r in rows], width=0.4, label="beam + LM")
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, rotation=20, fontsize=8)
    ax.set_ylabel("WER (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "wer.png", dpi=110)
    plt.close(fig)
    return ["curves.png", "wer.png"]


def measure_speeds(rows: list[dict], split: str, corpus: str | None, device: str, batch_size: int = 32,
                   repeats: int = 5) -> None:
    """Decode speed of every run, measured after all evaluation work, one run after another, with the same
    utterances, batch size, threads and device (`decode_speed`); stored in each row."""
    dev = inference.resolve_device(device)
    for row in rows:
        model, vocab, ckpt = model_from_checkpoint(row["checkpoint"], dev)
        c = Corpus(corpus or ckpt.get("config", {}).get("data", {}).get("corpus"))
        reader, idx = open_split(c, split, model, False, lambda *_: None)
        speed = inference.decode_speed(model, reader, idx, vocab, dev, batch_size=batch_size, repeats=repeats)
        row["decode_speed"] = speed
        row["frames_per_second"] = round(speed["frames_per_second"], 1)


def run(run_dirs: list[str], out: str, *, split: str = "test", corpus: str | None = None, lm: str | None = None,
        alpha: float = 0.5, beta: float = 1.0, beam_width: int = 32, device: str = "auto",
        tune_split: str | None = None, alphas: list[float] | None = None, betas: list[float] | None = None,
        log=print) -> dict:
    """With `lm` and `tune_split`, alpha/beta are searched per run on `tune_split` (as `tune-lm` does) and the
    best pair decodes `split`; with `lm` alone, every run is decoded with the given alpha and beta."""
    if not run_dirs:
        raise OfflineKDError("give at least one run directory")
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    rows, curves = [], {}
    for d in run_dirs:
        run_dir = Path(d)
        if not run_dir.is_dir():
            raise OfflineKDError(f"run directory not found: {run_dir}")
        ckpt = _checkpoint(run_dir)
        res = evaluate.run(str(ckpt), split, corpus_dir=corpus, device=device, log=log)
        row = {"name": run_dir.name, "path": str(run_dir), "checkpoint": str(ckpt), "type": _kind(run_dir),
               **{k: res[k] for k in ("wer", "cer", "num_parameters", "model_size_mb", "num_utterances")}}
        if lm and tune_split:
            tuned = tune_lm.run(str(ckpt), lm, alphas or [alpha], betas or [beta], dev_split=tune_split,
                                test_split=split, corpus_dir=corpus, beam_width=beam_width, num_processes=1,
                                device=device, log=lambda *_: None)["test"]
            row.update({"beam_wer": tuned["beam_wer"], "beam_cer": tuned["beam_cer"], "alpha": tuned["alpha"],
                        "beta": tuned["beta"]})
        elif lm:
            beam = evaluate.run(str(ckpt), split, corpus_dir=corpus, device=device, decoder="beam", lm=lm, alpha=alpha, beta=beta,
                                beam_width=beam_width, log=log)
            row.update({"beam_wer": beam["wer"], "beam_cer": beam["cer"]})
        eps = _epochs(run_dir)
        curves[run_dir.name] = eps
        best = [e for e in eps if e.get("best")]
        if best:
            row["best_epoch"] = best[-1]["epoch"]
        row["train_seconds"] = round(sum(e.get("seconds", 0) for e in eps), 1)
        rows.append(row)
        log(f"{run_dir.name}: WER {row['wer']:.2f}%")
    measure_speeds(rows, split, corpus, device)
    table = markdown_table(rows, bool(lm))
    sp = rows[0]["decode_speed"]
    images = _plots(rows, curves, outdir)
    md = [f"# offline-kd report ({split} split)", "", table, "",
          f"WER/CER in %, pooled over {rows[0]['num_utterances']} utterances; size = float32 weights."
          + (f" Beam search: KenLM `{lm}`, beam {beam_width}, " + (f"alpha/beta tuned per run on {tune_split}."
             if tune_split else f"alpha {alpha:g}, beta {beta:g}.") if lm else ""),
          "",
          f"Decode frames/s: greedy decoding alone (model forward + collapse, features already in memory) of the "
          f"first {sp['frames']:,} input frames of the {split} split, batch {sp['batch_size']}, {sp['threads']} "
          f"thread(s) on {sp['device']}; median of {sp['repeats']} passes after a warm-up, each run measured after "
          f"all evaluations, one run after another.", ""]
    md += [f"![{img}]({img})" for img in images]
    (outdir / "report.md").write_text("\n".join(md) + "\n")
    (outdir / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    return {"table": table, "rows": rows, "report": str(outdir / "report.md")}
