import json

import torch
from click.testing import CliRunner

from helpers import experiment_dict, killed_after, write_yaml
from offline_kd.cli import main
from offline_kd.config import ExperimentConfig, build_dataclass
from offline_kd.commands import train



def _epochs(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["event"] == "epoch"]


def test_teacher_learns_the_easy_corpus(tiny_teacher, tiny_corpus):
    out = tiny_teacher.parent
    epochs = _epochs(out)
    assert epochs[-1]["train_total"] < 0.5 * epochs[0]["train_total"]
    res = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(tiny_teacher), "--split", "test", "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output.strip().splitlines()[-1])
    assert r["wer"] < 20.0, r
    assert r["num_utterances"] == 16 and r["num_parameters"] > 0 and "cer" in r
    for f in ("config.yaml", "checkpoint_best.pt", "checkpoint_last.pt", "metrics.jsonl"):
        assert (out / f).exists()
    assert list((out / "tensorboard").iterdir())


def test_resume_gives_the_same_weights(tiny_corpus, tmp_path):
    full = build_dataclass(ExperimentConfig, experiment_dict(tiny_corpus, tmp_path / "full", epochs=3,
                                                             accumulation_steps=2))
    train.run(full, log=lambda *_: None)
    # interrupted run: stops after 2 epochs, then resumed to 3
    part_d = experiment_dict(tiny_corpus, tmp_path / "part", epochs=2, accumulation_steps=2)
    train.run(build_dataclass(ExperimentConfig, part_d), log=lambda *_: None)
    part_d["train"]["epochs"] = 3
    # the schedule length depends on epochs: an interrupted run is resumed with its full config
    ck = torch.load(tmp_path / "part" / "checkpoint_last.pt", weights_only=False)
    assert ck["epoch"] == 2
    interrupted = experiment_dict(tiny_corpus, tmp_path / "resumed", epochs=3, accumulation_steps=2)
    cfg = build_dataclass(ExperimentConfig, interrupted)
    killed_after(train.run, cfg, epochs_done=2)
    train.run(cfg, resume=True, log=lambda *_: None)
    a = torch.load(tmp_path / "full" / "checkpoint_last.pt", weights_only=False)["model_state_dict"]
    b = torch.load(tmp_path / "resumed" / "checkpoint_last.pt", weights_only=False)["model_state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_existing_run_is_not_overwritten_without_resume(tiny_corpus, tmp_path):
    cfgfile = write_yaml(tmp_path / "c.yaml", experiment_dict(tiny_corpus, tmp_path / "run", epochs=1))
    runner = CliRunner()
    assert runner.invoke(main, ["train", "--config", str(cfgfile)]).exit_code == 0
    res = runner.invoke(main, ["train", "--config", str(cfgfile)])
    assert res.exit_code == 1 and "--resume" in res.output


def test_vocab_size_mismatch_is_reported(tiny_corpus, tmp_path):
    d = experiment_dict(tiny_corpus, tmp_path / "run", epochs=1)
    d["model"]["num_classes"] = 50
    res = CliRunner().invoke(main, ["train", "--config", str(write_yaml(tmp_path / "c.yaml", d))])
    assert res.exit_code == 1 and "num_classes" in res.output
