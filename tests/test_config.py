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
