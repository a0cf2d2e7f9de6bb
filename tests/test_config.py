from pathlib import Path

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
    load_config("configs/dump_config_1pct.yaml", DumpRootConfig)
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
            load_config(base, ExperimentConfig, [f"{k}={yaml.safe_dump([v], default_flow_style=True, width=10**6).strip()[1:-1]}"
                                                 for k, v in run["set"].items()])  # (a flow-style YAML value)


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
    from offline_kd.distillation.dump import make_codecs
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


@pytest.mark.parametrize("schema,key,value,allowed", [
    ("experiment", "train.scheduler", "cosin", "cosine or constant"),
    ("experiment", "train.optimizer", "sgd", "adam or adamw"),
    ("experiment", "train.precision", "fp8", "one of fp32, bf16, fp16"),
    ("experiment", "distill.kl_frames", "some", "all or spikes"),
    ("experiment", "distill.kl_target", "half", "full or collapsed"),
    ("experiment", "distill.decode_on", "gpu", "auto, host or device"),
    ("experiment", "distill.pseudo_labels", "beam", "auto, greedy, lm or lm_1best"),
    ("dump", "dump.precision", "fp64", "one of fp32, bf16, fp16"),
    ("dump", "dump.encode_on", "cpu", "auto, host or device"),
    ("dump", "dump.codecs.compressor", "lz4", "zstd, blosc or none"),
    ("dump", "dump.codecs.topk_tail", "flat", "uniform, prior or lowrank"),
    ("dump", "dump.codecs.logits_coeff", "int4", "float16 or int8"),
    ("dump", "dump.codecs.lowrank_coeff", 8, "float16, int8 or step"),
])
def test_a_wrong_choice_is_one_line_with_the_allowed_values(tmp_path, schema, key, value, allowed):
    """Choice-valued keys are Literal[...]: the loader refuses another value with the key path, the value and the
    allowed values, in one line; a section built on its own or directly refuses it too; every allowed value loads."""
    import typing
    from offline_kd import config as C
    root = C.ExperimentConfig if schema == "experiment" else C.DumpRootConfig
    p = tmp_path / "c.yaml"
    p.write_text("{}\n")
    with pytest.raises(OfflineKDError) as e:
        load_config(p, root, [f"{key}={value}"])
    assert str(e.value) == f"{p}: {key} must be {allowed}, got {value!r}"
    *sections, name = key.split(".")
    cls = root
    for s in sections:
        cls = typing.get_args(typing.get_type_hints(cls)[s])[0] if s == "distill" else typing.get_type_hints(cls)[s]
    for build in (lambda: cls(**{name: value}), lambda: C.build_dataclass(cls, {name: value})):
        with pytest.raises(OfflineKDError, match=f"^{key} must be {allowed}, got {value!r}$"):
            build()         # a section on its own: the same message, its key path from cls.SECTION
    for choice in typing.get_args(typing.get_type_hints(cls)[name]):
        cfg = load_config(p, root, [f"{key}={choice}"])
        for part in key.split("."):
            cfg = getattr(cfg, part)
        assert cfg == choice and type(cfg) is str


def test_a_literal_key_saves_the_same_string(tmp_path):
    from offline_kd.config import DumpRootConfig, save_config
    cfg = load_config(None, ExperimentConfig, ["train.scheduler=constant", "distill.kl_frames=spikes",
                                               "train.precision=bf16"])
    save_config(cfg, tmp_path / "c.yaml")
    text = (tmp_path / "c.yaml").read_text()
    assert "scheduler: constant\n" in text and "kl_frames: spikes\n" in text and "precision: bf16\n" in text
    assert load_config(tmp_path / "c.yaml", ExperimentConfig) == cfg
    dump = load_config(None, DumpRootConfig, ["dump.codecs.compressor=none", "dump.encode_on=host"])
    assert dump.dump.codecs.compressor == "none" and dump.dump.encode_on == "host"


SPEED = "augment.speed_perturb changes the number of frames"
MASKS = "augment.time_masks / freq_masks: with views the student sees exactly the view its teacher saw"


@pytest.mark.parametrize("command,overrides,message", [
    ("train", ["distill.alpha=0.5"], "this config has a 'distill' section: use `offline-kd train-student`"),
    ("train-student", [], "the config has no 'distill' section (cache, alpha, beta, gamma, ...); "
                          "for CTC-only training use `offline-kd train`"),
    ("train-student", ["distill.alpha=0.5", "data.train_split=[train, more]"],
     "data.train_split: train-student trains on one transcribed split, got ['train', 'more'] (give further audio as "
     "distill.untranscribed_splits)"),
    ("train-student", ["distill.alpha=0.5", "augment.speed_perturb=[0.9, 1.1]"], SPEED),
    ("train-student", ["distill.untranscribed_splits=[extra, train]"],
     "distill.untranscribed_splits: 'train' is data.train_split; give splits of other audio (training uses its "
     "labels, validation never sees untranscribed data)"),
    ("train-student", ["distill.untranscribed_splits=[dev]"], "'dev' is data.dev_split"),
    ("train-student", ["distill.views=[0.9, 1.1]", "augment.time_masks=1"], MASKS),
    ("train-student", ["distill.views=[{speed: 1.0}]", "augment.freq_masks=2"], MASKS),
])
def test_cross_section_rules_are_one_validation_step(command, overrides, message):
    """Rules between sections that need nothing but the config: refused by validate_experiment, which each
    command calls first, with the message the command gave before."""
    from offline_kd.config import validate_experiment
    cfg = load_config(None, ExperimentConfig, overrides)
    with pytest.raises(OfflineKDError) as e:
        validate_experiment(cfg, command)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_validation_accepts_what_each_command_takes():
    from offline_kd.config import validate_experiment
    validate_experiment(load_config(None, ExperimentConfig), "train")
    validate_experiment(load_config(None, ExperimentConfig, ["data.train_split=[a, b]",
                                                             "augment.speed_perturb=[0.9, 1.1]",
                                                             "augment.time_masks=2"]), "train")
    validate_experiment(load_config(None, ExperimentConfig, ["distill.untranscribed_splits=[extra]",
                                                             "data.train_split=[train]", "augment.time_masks=2"]),
                        "train-student")
    validate_experiment(load_config(None, ExperimentConfig, ["distill.views=[0.9, 1.1]"]), "train-student")


def test_the_commands_validate_before_anything_else(tmp_path):
    """train / train-student refuse such a config before they open a corpus (this one does not exist)."""
    from offline_kd.commands import train, train_student
    missing = ["data.corpus=" + str(tmp_path / "none"), "train.output_dir=" + str(tmp_path / "run")]
    with pytest.raises(OfflineKDError, match="has a 'distill' section"):
        train.run(load_config(None, ExperimentConfig, missing + ["distill.alpha=0.5"]), log=lambda *_: None)
    with pytest.raises(OfflineKDError, match="'dev' is data.dev_split"):
        train_student.run(load_config(None, ExperimentConfig, missing + ["distill.untranscribed_splits=[dev]"]),
                          log=lambda *_: None)
    with pytest.raises(OfflineKDError, match="speed_perturb changes the number of frames"):
        train_student.run(load_config(None, ExperimentConfig, missing + ["distill.alpha=0.5",
                                                                         "augment.speed_perturb=[1.1]"]),
                          log=lambda *_: None)
    assert not (tmp_path / "run").exists()


def test_shipped_configs_are_found_by_name_and_shown(tmp_path, monkeypatch):
    """#45: the configs a user needs ship with the package: `--config NAME` finds them wherever it runs from,
    `config list` / `config show` print them."""
    from click.testing import CliRunner
    from offline_kd.cli import main
    from offline_kd.config import ExperimentConfig, load_config, resolve_config_path
    repo = Path(__file__).resolve().parents[1] / "configs"
    monkeypatch.chdir(tmp_path)                       # no configs/ here: only the shipped ones can be found
    for name in ("demo/distill", "demo/distill.yaml", "configs/demo/distill.yaml"):
        assert resolve_config_path(name).read_text() == (repo / "demo" / "distill.yaml").read_text()
    assert load_config("teacher_config", ExperimentConfig).model.num_layers >= 1
    res = CliRunner().invoke(main, ["config", "list"])
    names = [line.split("\t")[0] for line in res.output.splitlines()]
    assert res.exit_code == 0 and {"teacher_config", "dump_config", "demo/distill"} <= set(names)
    res = CliRunner().invoke(main, ["config", "show", "demo/distill"])
    assert res.exit_code == 0 and res.output == (repo / "demo" / "distill.yaml").read_text()
    res = CliRunner().invoke(main, ["config", "show", "no/such"])
    assert res.exit_code != 0 and "config list" in res.output and "Traceback" not in res.output


def test_a_built_wheel_carries_the_configs(tmp_path):
    """setup.cfg's data_files put every shipped config into the wheel (installed under <prefix>/share/offline-kd)."""
    import shutil
    import subprocess
    import sys
    import zipfile
    repo = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"                  # a copy: the build leaves build/ and egg-info behind it
    shutil.copytree(repo / "offline_kd", src / "offline_kd", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(repo / "configs", src / "configs")
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(repo / name, src / name)
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                          str(tmp_path), str(src)], capture_output=True, text=True)
    if res.returncode != 0 and "No module named" in res.stderr:
        pytest.skip(f"cannot build a wheel here: {res.stderr.strip().splitlines()[-1]}")
    assert res.returncode == 0, res.stderr
    wheel = next(tmp_path.glob("offline_kd-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(p.relative_to(repo / "configs").as_posix() for p in (repo / "configs").rglob("*.yaml"))
    inside = sorted(n.split("/share/offline-kd/configs/", 1)[1] for n in names if "/share/offline-kd/configs/" in n)
    assert inside == shipped
