import csv
import json

import pytest

from click.testing import CliRunner

from helpers import QUIET, dump_cfg, student_dict, write_unigram_arpa, write_yaml
from offline_kd.cli import main
from offline_kd.commands import dump_teacher



@pytest.mark.slow
def test_three_run_ablation_with_a_broken_run_then_rerun_skips(f32_cache, tiny_corpus, tmp_path):  # noqa: F811
    base = student_dict(tiny_corpus, f32_cache, tmp_path / "unused", epochs=1)
    spec = {"base": base, "output_dir": str(tmp_path / "abl"), "parallel": 2, "evaluate": ["dev"],
            "runs": [{"name": "seed", "set": {}},
                     {"name": "no_fm", "set": {"distill.gamma": 0.0}},
                     {"name": "broken", "set": {"distill.layer_mapping": {1: 7}}}]}
    cfg = write_yaml(tmp_path / "abl.yaml", spec)
    runner = CliRunner()
    res = runner.invoke(main, ["ablate", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in csv.DictReader(open(tmp_path / "abl" / "results.csv"))}
    assert rows["seed"]["status"] == "ok" and rows["no_fm"]["status"] == "ok"
    # the table reports each run's own evaluation: the best checkpoint's dev WER as its metrics logged it
    for name in ("seed", "no_fm"):
        logged = [json.loads(x) for x in (tmp_path / "abl" / name / "metrics.jsonl").read_text().splitlines()]
        best = min(r["dev_wer"] for r in logged if r["event"] == "epoch" and "dev_wer" in r)
        assert float(rows[name]["dev_wer"]) == pytest.approx(best, abs=0.01)
        steps = [r for r in logged if r["event"] == "step"]
        assert steps and all(("train/feature" in r) == (name == "seed") for r in steps)   # gamma = 0: no term
    assert rows["broken"]["status"] == "failed" and "teacher layer 7" in rows["broken"]["error"]
    md = (tmp_path / "abl" / "results.md").read_text()
    assert "| seed | ok |" in md and "broken" in md
    # rerun: finished runs are skipped (their result files are untouched)
    stamp = (tmp_path / "abl" / "seed" / "checkpoint_last.pt").stat().st_mtime
    res = runner.invoke(main, ["ablate", "--config", str(cfg)])
    assert res.exit_code == 0
    assert "finished earlier, skipped" in res.output
    assert (tmp_path / "abl" / "seed" / "checkpoint_last.pt").stat().st_mtime == stamp


def test_report_renders_table_and_pngs(tiny_teacher, tiny_corpus, tmp_path):
    res = CliRunner().invoke(main, ["report", str(tiny_teacher.parent), "--out", str(tmp_path / "rep"),
                                    "--split", "dev"])
    assert res.exit_code == 0, res.output
    assert f"| {tiny_teacher.parent.name} |" in res.output          # the run's row in the printed table
    for f in ("report.md", "curves.png", "wer.png", "results.json"):
        assert (tmp_path / "rep" / f).stat().st_size > 0
    assert (tmp_path / "rep" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = json.loads((tmp_path / "rep" / "results.json").read_text())
    assert rows[0]["num_parameters"] > 0 and "wer" in rows[0]


def test_tune_lm_and_beam_evaluate_with_a_real_kenlm_model(tiny_teacher, tiny_corpus, tmp_path):
    """A real ARPA model written here (bigram over the corpus words): beam search + LM runs end to end."""
    from offline_kd.data.corpus import Corpus
    c = Corpus(tiny_corpus)
    words = c.vocab.tokens[1:]
    arpa = write_unigram_arpa(tmp_path / "lm.arpa", list(words), (words[0], words[1]))
    runner = CliRunner()
    res = runner.invoke(main, ["evaluate", "--checkpoint", str(tiny_teacher), "--split", "dev", "--decoder", "beam",
                               "--lm", str(arpa), "--compare-greedy", "--json", "--beam-width", "8"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output.strip().splitlines()[-1])
    assert {"wer", "cer", "greedy_wer", "greedy_cer"} <= set(r)
    res = runner.invoke(main, ["tune-lm", "--checkpoint", str(tiny_teacher), "--lm", str(arpa), "--alphas", "0,0.5",
                               "--betas", "0,1", "--beam-width", "8", "--out", str(tmp_path / "t.json")])
    assert res.exit_code == 0, res.output
    t = json.loads((tmp_path / "t.json").read_text())
    assert len(t["grid"]) == 4 and "test" in t and t["best"]["wer"] == min(g["wer"] for g in t["grid"])
    # the same search on a float32 cache of the teacher's dev split: no model runs, the same grid
    dump_teacher.run(dump_cfg(tiny_teacher, tiny_corpus, tmp_path / "c.zarr", splits=["dev"]), **QUIET)
    res = runner.invoke(main, ["tune-lm", "--cache", str(tmp_path / "c.zarr"), "--lm", str(arpa), "--alphas", "0,0.5",
                               "--betas", "0,1", "--beam-width", "8", "--out", str(tmp_path / "c.json")])
    assert res.exit_code == 0, res.output
    tc = json.loads((tmp_path / "c.json").read_text())
    assert tc["grid"] == t["grid"] and tc["best"] == t["best"] and "test" not in tc
    assert tc["dev_greedy_wer"] == pytest.approx(t["dev_greedy_wer"])
    for args, msg in ((["--cache", str(tmp_path / "c.zarr"), "--dev-split", "train"], "holds no split 'train'"),
                      ([], "give --checkpoint (a model) or --cache"),
                      (["--cache", str(tmp_path / "c.zarr"), "--checkpoint", str(tiny_teacher)], "one of them")):
        res = runner.invoke(main, ["tune-lm", "--lm", str(arpa), *args])
        assert res.exit_code == 1 and msg in res.output and "Traceback" not in res.output, res.output
    res = runner.invoke(main, ["evaluate", "--checkpoint", str(tiny_teacher), "--decoder", "beam",
                               "--lm", str(tmp_path / "missing.arpa")])
    assert res.exit_code == 1 and "not found" in res.output
    res = runner.invoke(main, ["evaluate", "--checkpoint", str(tiny_teacher), "--lm", str(arpa)])
    assert res.exit_code == 1 and "--lm is used by beam search only: add --decoder beam" in res.output


def test_parallel_runs_share_the_cores():
    """N runs at a time get cores / N threads each (oversubscribed runs are slower and follow another
    floating-point trajectory than the same run alone), unless the user set OMP_NUM_THREADS."""
    from offline_kd.commands.ablate import child_env
    assert child_env(2, {"PATH": "/bin"}, cores=2)["OMP_NUM_THREADS"] == "1"
    assert child_env(2, {}, cores=16)["OMP_NUM_THREADS"] == "8"
    assert child_env(4, {}, cores=2)["OMP_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS" not in child_env(1, {}, cores=16)
    assert child_env(2, {"OMP_NUM_THREADS": "3"}, cores=16)["OMP_NUM_THREADS"] == "3"
    assert child_env(2, {"PATH": "/bin"}, cores=2)["PATH"] == "/bin"
