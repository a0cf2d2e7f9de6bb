"""Behaviours a user relies on that no other test pinned (#29 item 9): LM weights changed on a built beam decoder,
the best checkpoint across a --resume, the LR warm-up's ends, metrics.jsonl after a kill between an epoch's record
and its checkpoint, the best epoch named by `report` and `ablate`, gradient accumulation, and the untranscribed share
of the first epoch. Each test is small: tiny models and corpora made here, or the session's tiny corpus."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import (
    QUIET,
    Killed,
    experiment_dict,
    find_tool,
    killed_after,
    student_dict,
    tiny_spec,
    write_yaml,
)

from offline_kd.config import ExperimentConfig, build_dataclass
from offline_kd.data.synth import write_synth_corpus

CPU = torch.device("cpu")


# ------------------------------------------------------------------------------------------------------------------
# 1. BeamSearchDecoder.set_weights (tune-lm's alpha/beta grid) decodes like a decoder built with those weights

from test_beam import ARPA, CHAR_TOKENS  # noqa: E402  (the same toy 2-gram: "the cat" likely, "the kat" not)


def _the_kat() -> np.ndarray:
    """t h e | {k .55, c .40} a t (blanks between): greedy reads 'the kat', an LM with weight reads 'the cat'."""
    spec = [{"t": .9}, {"<blank>": .9}, {"h": .9}, {"e": .9}, {"|": .9},
            {"k": .55, "c": .40}, {"<blank>": .9}, {"a": .9}, {"t": .9}, {"<blank>": .9}]
    out = np.zeros((len(spec), len(CHAR_TOKENS)))
    for t, probs in enumerate(spec):
        rest = (1.0 - sum(probs.values())) / (len(CHAR_TOKENS) - len(probs))
        out[t] = [probs.get(tok, rest) for tok in CHAR_TOKENS]
    return np.log(out).astype(np.float32)


def _beam_batch() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    batch = [_the_kat(), np.zeros((0, len(CHAR_TOKENS)), np.float32)]
    for _ in range(4):  # random log-softmax matrices
        x = rng.normal(size=(int(rng.integers(8, 25)), len(CHAR_TOKENS))) * 3
        batch.append((x - np.log(np.exp(x).sum(-1, keepdims=True))).astype(np.float32))
    return batch


@pytest.fixture(params=["handmade-arpa", "lmplz-binary"])
def char_lm(request, tmp_path) -> str:
    pytest.importorskip("pyctcdecode")
    pytest.importorskip("kenlm")
    path = tmp_path / "lm.arpa"
    if request.param == "handmade-arpa":
        path.write_text(ARPA)
        return str(path)
    lmplz, build_binary = find_tool("lmplz"), find_tool("build_binary")
    if lmplz is None or build_binary is None:
        pytest.skip("lmplz/build_binary not installed (scripts/install_kenlm_tools.sh)")
    text = "\n".join(["the cat"] * 30 + ["kat"] + ["cat"] * 5)
    with open(path, "w") as f:
        subprocess.run([lmplz, "-o", "3", "--discount_fallback", "-S", "50M", "--vocab_estimate", "1000"],
                       input=text + "\n", text=True, stdout=f, stderr=subprocess.DEVNULL, check=True)
    binary = tmp_path / "lm.bin"     # the unigrams come from lm.arpa beside it
    subprocess.run([build_binary, str(path), str(binary)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True)
    return str(binary)


@pytest.mark.parametrize("num_processes", [1, 2])
def test_beam_decoder_with_weights_set_later_decodes_like_one_built_with_them(char_lm, num_processes):
    from offline_kd.decoding.beam import BeamSearchDecoder
    batch = _beam_batch()
    tuned = BeamSearchDecoder(CHAR_TOKENS, "char", "|", lm_path=char_lm, beam_width=16, num_processes=num_processes)
    grid = [(0.0, 0.0), (1.0, 0.5), (2.0, -1.0), (0.5, 3.0), (1.0, 0.5)]     # as tune-lm walks it (a pair again)
    texts = []
    for alpha, beta in grid:
        tuned.set_weights(alpha, beta)
        fresh = BeamSearchDecoder(CHAR_TOKENS, "char", "|", lm_path=char_lm, alpha=alpha, beta=beta, beam_width=16,
                                  num_processes=num_processes)
        got, want = tuned.decode(batch), fresh.decode(batch)
        assert got == want, (alpha, beta)
        got_n, want_n = tuned.decode_nbest(batch, 3), fresh.decode_nbest(batch, 3)
        assert [[t for t, _ in u] for u in got_n] == [[t for t, _ in u] for u in want_n], (alpha, beta)
        np.testing.assert_allclose([s for u in got_n for _, s in u], [s for u in want_n for _, s in u],
                                   rtol=1e-6, atol=1e-6, err_msg=str((alpha, beta)))
        texts.append((got[0], [s for _, s in got_n[0]]))
    # the weights matter here (else the comparison above would hold for a decoder that ignores them)
    assert texts[0][0] == "the kat" and texts[1][0] == "the cat"
    assert len({tuple(np.round(s, 4)) for _, s in texts}) == len(grid) - 1


# ------------------------------------------------------------------------------------------------------------------
# 2, 4. --resume: checkpoint_best.pt and metrics.jsonl


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("pinned_corpus") / "c"
    write_synth_corpus(out, tiny_spec(num_train=16, num_dev=4, num_test=4), log=lambda *_: None)
    return out


def _small_run(corpus, out, epochs) -> ExperimentConfig:
    return build_dataclass(ExperimentConfig, experiment_dict(corpus, out, hidden=8, layers=1, epochs=epochs,
                                                             batch_size=4))


def _rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _ckpt(path) -> dict:
    return torch.load(path, weights_only=False)


def test_checkpoint_best_after_resume_is_the_best_of_the_whole_run(small_corpus, tmp_path, monkeypatch):
    """Best dev WER at epoch 1, killed after epoch 2, resumed; epochs 3 and 4 are worse than epoch 1 (but better
    than epoch 2): checkpoint_best.pt stays epoch 1's."""
    from offline_kd.commands import train
    from offline_kd.training import trainer as tr
    dev_wer = {1: 30.0, 2: 50.0, 3: 40.0, 4: 35.0}
    now = {}
    orig_epoch = tr.Trainer._epoch

    def epoch(self, e):
        now["epoch"] = e
        return orig_epoch(self, e)

    def scripted_dev(model, reader, indices, vocab, device, **kw):
        return {"wer": dev_wer[now["epoch"]], "cer": dev_wer[now["epoch"]] / 2, "num_utterances": len(indices)}

    monkeypatch.setattr(tr.Trainer, "_epoch", epoch)
    monkeypatch.setattr(tr, "evaluate_greedy", scripted_dev)
    run = tmp_path / "run"
    cfg = _small_run(small_corpus, run, epochs=4)
    killed_after(train.run, cfg, epochs_done=2)
    assert _ckpt(run / "checkpoint_last.pt")["epoch"] == 2
    best_before = _ckpt(run / "checkpoint_best.pt")
    assert best_before["epoch"] == 1

    train.run(cfg, resume=True, **QUIET)
    assert _ckpt(run / "checkpoint_last.pt")["epoch"] == 4
    best = _ckpt(run / "checkpoint_best.pt")
    assert best["epoch"] == 1 and best["dev"]["wer"] == 30.0 and best["best_wer"] == 30.0
    for k, v in best_before["model_state_dict"].items():
        torch.testing.assert_close(best["model_state_dict"][k], v, rtol=0, atol=0, msg=k)
    assert _ckpt(run / "checkpoint_last.pt")["best_wer"] == 30.0
    assert [r["epoch"] for r in _rows(run) if r["event"] == "epoch" and r.get("best")] == [1]


def test_metrics_after_a_kill_between_the_epoch_record_and_its_checkpoint(small_corpus, tmp_path, monkeypatch):
    """Killed after epoch 2's record reached metrics.jsonl but before checkpoint_last.pt of epoch 2 was written:
    after --resume every epoch (and step) is there once, and the history agrees with the checkpoints."""
    from offline_kd.commands import train
    from offline_kd.training import trainer as tr
    ref = tmp_path / "uninterrupted"
    train.run(_small_run(small_corpus, ref, epochs=3), **QUIET)

    run = tmp_path / "run"
    cfg = _small_run(small_corpus, run, epochs=3)
    orig_save = tr.save_checkpoint

    def save_or_die(path, state, *a, **kw):
        if path.name == "checkpoint_last.pt" and state["epoch"] == 2:
            raise Killed()
        return orig_save(path, state, *a, **kw)

    monkeypatch.setattr(tr, "save_checkpoint", save_or_die)
    with pytest.raises(Killed):
        train.run(cfg, **QUIET)
    monkeypatch.setattr(tr, "save_checkpoint", orig_save)
    assert [r["epoch"] for r in _rows(run) if r["event"] == "epoch"] == [1, 2]    # the record was written
    assert _ckpt(run / "checkpoint_last.pt")["epoch"] == 1

    train.run(cfg, resume=True, **QUIET)
    rows, want = _rows(run), _rows(ref)
    epochs = [r for r in rows if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    steps = [r["step"] for r in rows if r["event"] == "step"]
    assert steps == list(range(1, len(steps) + 1)) == [r["step"] for r in want if r["event"] == "step"]
    last, best = _ckpt(run / "checkpoint_last.pt"), _ckpt(run / "checkpoint_best.pt")
    assert (last["epoch"], last["step"]) == (epochs[-1]["epoch"], epochs[-1]["step"])
    assert [r["epoch"] for r in epochs if r.get("best")][-1] == best["epoch"]
    volatile = ("seconds", "frames_per_second")
    assert [{k: v for k, v in r.items() if k not in volatile} for r in epochs] == \
        [{k: v for k, v in r.items() if k not in volatile} for r in want if r["event"] == "epoch"]


# ------------------------------------------------------------------------------------------------------------------
# 3, 6. The Trainer's optimizer steps: LR warm-up, gradient accumulation (a Trainer on hand-made batches)

NUM_CLASSES = 6


def _items(n: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        t = 10 + int(torch.randint(0, 6, (1,), generator=g))
        out.append({"index": i, "utterance_id": f"u{i}", "features": torch.randn(t, 16, generator=g),
                    "labels": torch.randint(1, NUM_CLASSES, (2 + i % 2,), generator=g)})
    return out


class _InOrder:
    """The batches of the list, in order, every epoch (the Trainer's `sampler` argument: whole batches)."""

    def __init__(self, n: int):
        self.n = n

    def set_epoch(self, epoch):
        pass

    def __iter__(self):
        return iter(range(self.n))

    def __len__(self):
        return self.n


def _trainer(tmp_path, batches: list[dict], **train):
    from offline_kd.data.vocab import Vocabulary
    from offline_kd.losses.modules import CTCLoss
    from offline_kd.models.interface import build_model
    from offline_kd.training.trainer import Trainer
    cfg = build_dataclass(ExperimentConfig, {
        "data": {"corpus": str(tmp_path), "batch_size": 2, "prefetch_batches": 0, "num_workers": 0},
        "model": {"input_dim": 16, "hidden_dim": 8, "num_layers": 1, "num_classes": NUM_CLASSES, "dropout": 0.0},
        "train": {"epochs": 1, "lr": 0.01, "output_dir": str(tmp_path / "run"), "progress": False,
                  "log_every": 1000, "grad_clip": 1e9, "device": "cpu", **train}})
    torch.manual_seed(0)
    model = build_model(cfg.model)
    vocab = Vocabulary(("<blank>",) + tuple(f"w{i}" for i in range(1, NUM_CLASSES)))
    loss_fn = CTCLoss(lambda x, lengths: x, CPU)
    trainer = Trainer(cfg, model, vocab, batches, None, None, None, None, loss_fn, CPU, sampler=_InOrder(len(batches)))
    trainer.out.mkdir(parents=True)
    seen = []     # per optimizer step: (lr, parameters, gradients) as the step finds them

    def before_step(optimizer, args, kwargs):
        seen.append((optimizer.param_groups[0]["lr"], [p.detach().clone() for p in model.parameters()],
                     [p.grad.detach().clone() for p in model.parameters()]))

    trainer.optimizer.register_step_pre_hook(before_step)
    return trainer, loss_fn, seen


@pytest.mark.parametrize("scheduler", ["cosine", "constant"])
@pytest.mark.parametrize("accumulation", [1, 2])
def test_lr_warmup_starts_at_lr_over_warmup_steps_and_ends_at_lr(tmp_path, scheduler, accumulation):
    """Linear warm-up over train.warmup_steps optimizer steps: the first step runs at lr / warmup_steps, step
    warmup_steps at train.lr, and no step above train.lr."""
    from offline_kd.data.dataset import collate
    warm, lr = 4, 0.01
    items = _items(2 * 7 * accumulation)
    batches = [collate(items[i:i + 2]) for i in range(0, len(items), 2)]
    trainer, _, seen = _trainer(tmp_path, batches, warmup_steps=warm, scheduler=scheduler,
                                accumulation_steps=accumulation, epochs=1)
    trainer._epoch(1)
    lrs = [s[0] for s in seen]
    assert len(lrs) == 7
    assert lrs[0] == pytest.approx(lr / warm)
    assert lrs[warm - 1] == pytest.approx(lr)
    assert lrs[:warm] == pytest.approx([lr * k / warm for k in range(1, warm + 1)])
    assert max(lrs) == pytest.approx(lr)
    if scheduler == "constant":
        assert lrs[warm:] == pytest.approx([lr] * (7 - warm))
    else:
        assert all(a >= b for a, b in zip(lrs[warm - 1:], lrs[warm:])) and lrs[-1] < lr   # cosine decay after


def test_accumulated_gradient_equals_the_gradient_of_the_concatenated_batch(tmp_path):
    """accumulation_steps 3 over micro-batches of 2 utterances: the step's gradient is that of one batch of the 6
    (the CTC loss is a mean over utterances); the epoch's short last group (1 micro-batch) is not scaled down."""
    from offline_kd.data.dataset import collate
    from offline_kd.models.interface import build_model
    items = _items(8, seed=1)
    batches = [collate(items[i:i + 2]) for i in range(0, 8, 2)]
    trainer, loss_fn, seen = _trainer(tmp_path, batches, accumulation_steps=3)
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer._epoch(1)
    assert len(seen) == 2

    def grads_at(params, batch):
        model = build_model(trainer.model.config)
        if isinstance(params, dict):
            model.load_state_dict(params)
        else:
            with torch.no_grad():
                for p, v in zip(model.parameters(), params):
                    p.copy_(v)
        model.train()
        loss, _ = loss_fn(model, batch, 1)
        loss.backward()
        return [p.grad for p in model.parameters()]

    for got, want in zip(seen[0][2], grads_at(start, collate(items[:6]))):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    for got, want in zip(seen[1][2], grads_at(seen[1][1], collate(items[6:]))):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------------------------------
# 5. report and ablate name the best epoch: the last one marked best (the lowest dev WER)

# epochs 1, 2 and 4 each beat the best before them; 4 is the run's best
EPOCHS = [{"event": "epoch", "epoch": e, "step": 3 * e, "seconds": 1.0, "frames_per_second": 100.0,
           "train_total": 3.0 - 0.1 * e, "dev_wer": w, "dev_cer": w / 2, **({"best": True} if b else {})}
          for e, w, b in ((1, 60.0, True), (2, 40.0, True), (3, 45.0, False), (4, 30.0, True), (5, 35.0, False))]


def _metrics_text() -> str:
    rows = [{"event": "start", "num_parameters": 10, "train_batches": 3}] + EPOCHS
    return "".join(json.dumps(r) + "\n" for r in rows)


def _table_column(table: str, name: str, column: str) -> str:
    lines = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.splitlines()]
    col = lines[0].index(column)
    return next(cells[col] for cells in lines[2:] if cells[0] == name)


def test_report_names_the_last_epoch_marked_best(tmp_path, monkeypatch):
    from offline_kd.training import report
    run = tmp_path / "kd"
    run.mkdir()
    (run / "metrics.jsonl").write_text(_metrics_text())
    (run / "checkpoint_best.pt").write_bytes(b"unused: evaluation is replaced below")
    monkeypatch.setattr(report.evaluate, "run", lambda *a, **kw: {"wer": 30.0, "cer": 15.0, "num_parameters": 10,
                                                                  "model_size_mb": 0.1, "num_utterances": 4})

    def speeds(rows, *a, **kw):
        for r in rows:
            r["frames_per_second"] = 1000.0
            r["decode_speed"] = {"frames": 10, "batch_size": 32, "threads": 2, "device": "cpu", "repeats": 5}

    monkeypatch.setattr(report, "measure_speeds", speeds)
    monkeypatch.setattr(report, "_plots", lambda *a, **kw: [])
    out = report.run([str(run)], str(tmp_path / "rep"), split="dev", device="cpu", **QUIET)
    assert out["rows"][0]["best_epoch"] == 4
    assert _table_column(out["table"], "kd", "best epoch") == "4"
    assert json.loads((tmp_path / "rep" / "results.json").read_text())[0]["best_epoch"] == 4


def test_ablate_names_the_last_epoch_marked_best(tmp_path, monkeypatch):
    from offline_kd.distillation import ablation as ablate
    base = student_dict(tmp_path / "corpus", tmp_path / "cache.zarr", tmp_path / "unused")
    spec = write_yaml(tmp_path / "ablation.yaml", {"base": base, "output_dir": str(tmp_path / "abl"),
                                                     "runs": [{"name": "kd", "set": {}}], "evaluate": ["dev"]})

    def fake_run(cmd, **kw):
        """`train-student` leaves a run behind as a real one would; `evaluate --json` prints its result."""
        if "train-student" in cmd:
            cfg = yaml.safe_load(Path(cmd[cmd.index("--config") + 1]).read_text())
            out = tmp_path / "abl" / "kd"
            assert cfg["train"]["output_dir"] == str(out)
            (out / "metrics.jsonl").write_text(_metrics_text())
            (out / "checkpoint_best.pt").write_bytes(b"")
            return subprocess.CompletedProcess(cmd, 0, "", "")
        assert "evaluate" in cmd
        return subprocess.CompletedProcess(cmd, 0, json.dumps({"wer": 30.0, "cer": 15.0, "num_parameters": 10}), "")

    monkeypatch.setattr(ablate.subprocess, "run", fake_run)
    res = ablate.run(str(spec), log=lambda *_: None)
    assert res["rows"][0]["status"] == "ok" and res["rows"][0]["best_epoch"] == 4
    assert json.loads((tmp_path / "abl" / "kd" / "result.json").read_text())["best_epoch"] == 4
    import csv
    with open(tmp_path / "abl" / "results.csv") as f:
        assert next(csv.DictReader(f))["best_epoch"] == "4"


# ------------------------------------------------------------------------------------------------------------------
# 7. The untranscribed share of the first epoch


@pytest.mark.parametrize("fraction", [0.25, 0.45, 1.0])
def test_first_epoch_holds_the_stated_number_of_untranscribed_utterances(tiny_corpus, fraction):
    """As train-student builds them: the transcribed split, then the untranscribed one in one index space, and a
    SortedRunBatchSampler that draws round(fraction x untranscribed) of them per epoch (the number train-student's
    log states); the Trainer's first epoch is epoch 1, after len() was asked at epoch 0."""
    from torch.utils.data import DataLoader

    from offline_kd.data.corpus import Corpus
    from offline_kd.data.distill_dataset import DistillBatchDataset
    from offline_kd.data.sampler import SortedRunBatchSampler
    corpus = Corpus(tiny_corpus)
    train_reader, untr = corpus.split("train"), corpus.split("untranscribed")
    dataset = DistillBatchDataset(train_reader, corpus.vocab, None, untranscribed=[(untr, None)])
    n_train, n_untr = len(train_reader), len(untr)
    indices = np.concatenate([np.arange(n_train), dataset.part_offsets[1] + np.arange(n_untr)])
    sampled = np.arange(len(indices)) >= n_train

    def sampler():
        return SortedRunBatchSampler(dataset.lengths, indices, 8, None, seed=0, sampled=sampled,
                                     sampled_fraction=fraction)

    s = sampler()
    assert len(s) > 0                       # the Trainer sizes its schedule before the first epoch
    s.set_epoch(1)
    labelled, used = [], []
    for batch in DataLoader(dataset, sampler=s, batch_size=None):
        labelled += batch["labelled"].tolist()
        used += batch["indices"]
    expected = {0.25: 12, 0.45: 22, 1.0: 48}[fraction]          # round(fraction * 48): 12, 21.6 -> 22, 48
    assert n_untr == 48 and round(fraction * n_untr) == expected
    assert labelled.count(False) == expected
    assert labelled.count(True) == n_train
    assert len(used) == len(set(used)) == n_train + expected
    assert sorted(i for i in used if i < n_train) == list(range(n_train))
    fresh = sampler()
    fresh.set_epoch(1)
    assert sorted(used) == sorted(i for b in fresh for i in b)    # epoch 1's draw, whatever was asked before


def test_library_messages_name_arguments_and_the_command_line_shows_flags(tiny_corpus, tmp_path):
    """A library error names the argument (`resume`); the CLI shows the flag (--resume) in its place."""
    from click.testing import CliRunner
    from offline_kd.cli import main
    from offline_kd.commands import train
    from offline_kd.config import ExperimentConfig, build_dataclass
    from offline_kd.errors import OfflineKDError, as_flags
    from helpers import experiment_dict, write_yaml
    d = experiment_dict(tiny_corpus, tmp_path / "nothing", epochs=1)
    with pytest.raises(OfflineKDError, match=r"^`resume`: no checkpoint at "):
        train.run(build_dataclass(ExperimentConfig, d), resume=True, log=lambda *_: None)
    res = CliRunner().invoke(main, ["train", "--config", str(write_yaml(tmp_path / "c.yaml", d)), "--resume"])
    assert res.exit_code == 1 and "--resume: no checkpoint at" in res.output and "`" not in res.output
    assert as_flags("`online_teacher` and `lm`") == "--online-teacher and --lm"
