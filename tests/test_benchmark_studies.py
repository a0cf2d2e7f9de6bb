"""Every study under benchmarks/ (benchmarks/robustness.py's YAML files) names configs that load: each setting's
CTC-only config with its `baseline_sets`, and its distilled config with its `sets` and each of its recipes' `sets`,
through the same loader and checks as `offline-kd train` / `train-student`. A study's mistyped key or value would
otherwise surface hours into a run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from offline_kd.config import ExperimentConfig, load_config, validate_experiment
from offline_kd.errors import OfflineKDError

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted(p for p in (ROOT / "benchmarks").glob("*.yaml")
                 if {"settings", "recipes"} <= set(yaml.safe_load(p.read_text()) or {}))


def _runs(study: dict) -> list[tuple[str, str, str, list]]:
    """(setting, what, config path, overrides) of every training the study asks for."""
    out = []
    for st in study["settings"]:
        out.append((st["name"], "baseline", st["baseline"], list(st.get("baseline_sets", []))))
        names = st.get("recipes", list(study["recipes"]))
        for name in names:
            out.append((st["name"], name, st["distill"], list(st.get("sets", [])) + study["recipes"][name]["sets"]))
    return out


def test_the_studies_are_found():
    assert {p.name for p in STUDIES} >= {"robustness.yaml", "pseudo_labels.yaml", "aligned_targets.yaml",
                                         "budgets.yaml", "students.yaml"}


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_every_run_of_a_study_has_a_valid_config(path):
    study = yaml.safe_load(path.read_text())
    ref = study.get("reference")
    assert ref is None or ref in study["recipes"], f"{path.name}: reference {ref} is not a recipe"
    steps = study.get("prepare", {})
    problems = []
    for st in study["settings"]:
        problems += [f"{st['name']}: prepare step {p} is not defined" for p in st.get("prepare", []) if p not in steps]
        problems += [f"{st['name']}: recipe {r} is not defined" for r in st.get("recipes", []) if r not in
                     study["recipes"]]
    for setting, what, config, sets in _runs(study):
        if what != "baseline" and what not in study["recipes"]:
            continue                               # reported above
        try:
            cfg = load_config(ROOT / config, ExperimentConfig, sets)
            validate_experiment(cfg, "train" if what == "baseline" else "train-student")
        except OfflineKDError as exc:
            problems.append(f"{setting} / {what}: {exc}")
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


def test_a_mistyped_key_is_caught():
    """The check above can fail: a recipe with a key the config does not have is reported."""
    study = yaml.safe_load((ROOT / "benchmarks" / "aligned_targets.yaml").read_text())
    name = next(iter(study["recipes"]))
    st = study["settings"][0]
    sets = list(st.get("sets", [])) + study["recipes"][name]["sets"] + ["distill.kl_label_mixx=0.5"]
    with pytest.raises(OfflineKDError, match="kl_label_mixx"):
        load_config(ROOT / st["distill"], ExperimentConfig, sets)
