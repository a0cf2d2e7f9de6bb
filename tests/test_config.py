import pytest
from click.testing import CliRunner

from offline_kd.cli import main
from offline_kd.config import ExperimentConfig, load_config
from offline_kd.errors import OfflineKDError


def test_unknown_key_names_its_path(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  hiden_dim: 3\n")
    with pytest.raises(OfflineKDError, match=r"model\.hiden_dim"):
        load_config(p, ExperimentConfig)


def test_wrong_type_names_its_path(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochs: many\n")
    with pytest.raises(OfflineKDError, match=r"train\.epochs: expected int"):
        load_config(p, ExperimentConfig)


def test_overrides_apply_and_are_typed(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochs: 3\n")
    cfg = load_config(p, ExperimentConfig, ["train.epochs=7", "model.dropout=0.5", "distill.alpha=0.9"])
    assert cfg.train.epochs == 7 and cfg.model.dropout == 0.5 and cfg.distill.alpha == 0.9
    with pytest.raises(OfflineKDError, match=r"model\.num_layers"):
        load_config(p, ExperimentConfig, ["model.num_layers=two"])


def test_shipped_configs_load():
    from offline_kd.config import DumpRootConfig
    for name in ("teacher_config", "student_baseline", "distillation_config"):
        load_config(f"configs/{name}.yaml", ExperimentConfig)
    load_config("configs/dump_config.yaml", DumpRootConfig)
    for name in ("teacher", "baseline", "distill"):
        load_config(f"configs/demo/{name}.yaml", ExperimentConfig)
    for name in ("dump", "dump_views", "dump_views_masked"):
        load_config(f"configs/demo/{name}.yaml", DumpRootConfig)
    for name in ("teacher", "baseline", "distill", "dump"):
        load_config(f"recipes/tts_en/configs/{name}.yaml", DumpRootConfig if name == "dump" else ExperimentConfig)
    import yaml
    from offline_kd.config import AblationConfig, build_dataclass
    for path in ("configs/demo/ablation.yaml", "configs/demo/views.yaml", "configs/ablation.yaml",
                 "recipes/tts_en/configs/ablation.yaml"):
        abl = build_dataclass(AblationConfig, yaml.safe_load(open(path)))
        base = str(__import__("pathlib").Path(path).parent / abl.base)
        for run in abl.runs:        # every run's overrides make a valid config
            load_config(base, ExperimentConfig, [f"{k}={v}" for k, v in run["set"].items()])


def test_cli_config_error_is_one_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("trian:\n  epochs: 3\n")
    res = CliRunner().invoke(main, ["train", "--config", str(p)])
    assert res.exit_code == 1
    assert "unknown config key 'trian'" in res.output
    assert "Traceback" not in res.output


def test_cli_missing_config_file(tmp_path):
    res = CliRunner().invoke(main, ["train", "--config", str(tmp_path / "nope.yaml")])
    assert res.exit_code != 0 and "Traceback" not in res.output


def test_every_command_has_help():
    runner = CliRunner()
    for args in ([], ["data"], ["data", "synth"], ["data", "import"], ["data", "validate"], ["train"],
                 ["train-student"], ["dump-teacher"], ["evaluate"], ["cache"], ["cache", "info"],
                 ["cache", "verify"]):
        res = runner.invoke(main, args + ["--help"])
        assert res.exit_code == 0, args
        assert "Usage" in res.output


def test_the_commands_that_read_a_config_take_set():
    """README: `train`, `train-student` and `dump-teacher` take --set; `ablate` sets values in its own config."""
    import click
    from offline_kd.cli import main

    def commands(group, prefix=""):
        for name, cmd in group.commands.items():
            if isinstance(cmd, click.Group):
                yield from commands(cmd, prefix + name + " ")
            else:
                yield prefix + name, {o for p in cmd.params for o in getattr(p, "opts", [])}
    with_config = {name for name, opts in commands(main) if "--config" in opts}
    with_set = {name for name, opts in commands(main) if "--set" in opts}
    assert with_set == {"train", "train-student", "dump-teacher"}
    assert with_config - with_set == {"ablate"}


def test_codec_specs_in_the_config_are_the_stored_specs():
    """`codecs.log_probs: {name: topk, k: 8, ...}` gives the same codecs as the older flat keys, which still load
    with a deprecation message; mixing the two or leaving out the name is a one-line error."""
    import pytest as _pytest
    from offline_kd.commands.dump_teacher import make_codecs
    from offline_kd.config import DumpConfig, build_dataclass
    from offline_kd.errors import OfflineKDError
    nested = build_dataclass(DumpConfig, {"codecs": {
        "log_probs": {"name": "topk", "k": 8, "coverage": 0.999, "tail": "lowrank", "tail_rank": 112},
        "hidden": {"name": "lowrank", "rank": 1024, "coeff": "step", "target_error": 0.0085}}}).codecs
    flat = build_dataclass(DumpConfig, {"codecs": {
        "log_probs": "topk", "topk_k": 8, "topk_coverage": 0.999, "topk_tail": "lowrank", "logits_rank": 112,
        "hidden": "lowrank", "lowrank_rank": 1024, "lowrank_coeff": "step", "lowrank_target_error": 0.0085}}).codecs
    said = []
    a = make_codecs(nested, 1229, {2: 768, 4: 768}, log=said.append)
    assert not said
    b = make_codecs(flat, 1229, {2: 768, 4: 768}, log=said.append)
    assert a == b and a[1][2].rank == 768                            # ranks capped at the width
    assert len(said) == 2 and all("deprecated" in m for m in said)
    assert "codecs.log_probs: {name: topk, k: 8" in said[0]
    assert make_codecs(build_dataclass(DumpConfig, {"codecs": {"log_probs": "float16"}}).codecs, 9, {1: 4},
                       log=said.append)[0].name == "float16" and len(said) == 2      # a bare name: no warning
    for bad, message in (({"log_probs": {"name": "topk", "k": 8}, "topk_k": 4}, "give its settings there"),
                         ({"log_probs": {"k": 8}}, "needs a 'name'"),
                         ({"log_probs": {"name": "topk", "kk": 8}}, "bad settings for codec 'topk'"),
                         ({"log_probs": {"name": "nope"}}, "unknown codec 'nope'"),
                         ({"hidden": {"name": "int8", "dim": 3}}, "taken from the teacher")):
        with _pytest.raises(OfflineKDError, match=message):
            make_codecs(build_dataclass(DumpConfig, {"codecs": bad}).codecs, 9, {1: 4}, log=said.append)


def test_ablation_config_is_a_dataclass_with_key_paths_in_errors(tmp_path):
    from click.testing import CliRunner
    from offline_kd.cli import main
    for body, message in (("base: x.yaml\nrunz: []\n", "unknown config key 'ablation.runz'"),
                          ("runs: []\n", "'base' (a distillation config) is required"),
                          ("base: x.yaml\nparallel: 0\n", "parallel"),
                          ("base: x.yaml\nlm_alpha: high\n", "ablation.lm_alpha: expected float")):
        (tmp_path / "a.yaml").write_text(body)
        res = CliRunner().invoke(main, ["ablate", "--config", str(tmp_path / "a.yaml")])
        assert res.exit_code == 1 and message in res.output and "Traceback" not in res.output, res.output
