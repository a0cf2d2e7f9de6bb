"""The package's layers, read from its imports (AST): no cycle between packages, no import against the declared
order, no offline_kd import hidden inside a function (a cycle in disguise), outside cli.py.

The order (docs/architecture.md), lowest first; a module may import its own package and any lower layer:

    errors, locking, atomic < config < data < decoding < models < runtime < cache < losses < training < inference
    < teachers < distillation < commands < api < cli

`runtime` (torch.distributed set-up, devices, batched inference loaders) and checkpoint loading (models/) sit below
training, so the dump and the teacher sources never import `training`.

`offline_kd/__init__.py` re-exports `api` lazily (PEP 562 `__getattr__`), so `import offline_kd` stays light.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "offline_kd"

LAYERS = ["errors", "locking", "atomic", "config", "data", "decoding", "models", "runtime", "cache", "losses", "training",
          "inference", "teachers", "distillation", "commands", "api", "cli"]
RANK = {name: (0 if name in ("errors", "locking", "atomic") else i) for i, name in enumerate(LAYERS)}
RANK["__main__"] = RANK["cli"]
RANK["__init__"] = 0

#: third-party imports that may sit inside a function: optional extras, or heavy modules only some paths need
OPTIONAL = ("pyctcdecode", "kenlm", "matplotlib", "torch.utils.tensorboard", "torch.nn.parallel", "lhotse",
            "transformers", "safetensors", "s3fs", "tensorstore", "multiprocessing", "onnx", "onnxruntime", "sherpa_onnx",
            "sentencepiece", "huggingface_hub")


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        yield rel, ast.parse(path.read_text(), str(path))


def _layer(rel: Path) -> str:
    return rel.parts[0][:-3] if len(rel.parts) == 1 else rel.parts[0]


def _imported(node) -> list[str]:
    if isinstance(node, ast.ImportFrom):
        if node.level:                       # relative: resolved against the package (none are used today)
            return ["offline_kd.<relative>"]
        return [node.module or ""]
    return [a.name for a in node.names]


def _target_layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "offline_kd":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_is_in_a_declared_layer():
    unknown = sorted({_layer(rel) for rel, _ in _modules()} - set(RANK))
    assert not unknown, f"packages missing from LAYERS: {unknown}"


def _cross_layer_imports():
    """(module path, line, its layer, imported module, that module's layer) for every import of another layer."""
    for rel, tree in _modules():
        here = _layer(rel)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for module in _imported(node):
                    there = _target_layer(module)
                    if there is not None and there != here:
                        yield rel, node.lineno, here, module, there


def test_imports_follow_the_declared_order():
    wrong = [f"{rel}:{line} ({here}) imports {module} ({there})"
             for rel, line, here, module, there in _cross_layer_imports() if RANK[there] > RANK[here]]
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_no_cycle_between_packages():
    edges: dict[str, set[str]] = {}
    for _, _, here, _, there in _cross_layer_imports():
        edges.setdefault(here, set()).add(there)

    def reach(a, seen):
        for b in edges.get(a, ()):
            if b not in seen:
                seen.add(b)
                reach(b, seen)
        return seen
    cycles = sorted(a for a in edges if a in reach(a, set()))
    assert not cycles, f"packages on an import cycle: {cycles} ({ {a: sorted(edges[a]) for a in cycles} })"


def test_no_import_inside_a_function_outside_cli():
    hidden = []
    for rel, tree in _modules():
        if rel.name == "cli.py":
            continue
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, (ast.Import, ast.ImportFrom)):
                        for module in _imported(node):
                            if not any(module == o or module.startswith(o + ".") for o in OPTIONAL):
                                hidden.append(f"{rel}:{node.lineno} imports {module} inside {fn.name}()")
    assert not hidden, "function-level imports (move them to the top, or the code to the right layer):\n" + \
        "\n".join(hidden)


def test_the_checker_sees_a_wrong_import(tmp_path, monkeypatch):
    """The checks above can fail: a module of a low layer importing a high one is reported."""
    pkg = tmp_path / "offline_kd"
    (pkg / "data").mkdir(parents=True)
    (pkg / "data" / "x.py").write_text("from offline_kd.training.trainer import Trainer\n\n"
                                       "def f():\n    from offline_kd.cache import reader\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", pkg)
    for check in (test_imports_follow_the_declared_order, test_no_import_inside_a_function_outside_cli):
        try:
            check()
        except AssertionError as exc:
            assert "data/x.py" in str(exc)
        else:
            raise AssertionError(f"{check.__name__} accepted a wrong import")


def test_the_dump_and_the_teacher_sources_do_not_import_training():
    """Running a teacher is not training: teachers/ and the dump take checkpoints from models/ and loaders,
    devices and torch.distributed from runtime/."""
    wrong = [f"{rel}:{line} imports {module}" for rel, line, here, module, there in _cross_layer_imports()
             if there == "training" and (here == "teachers" or str(rel).startswith("distillation/dump"))]
    assert not wrong, "\n".join(wrong)


def test_every_function_is_under_60_lines():
    """One function, one idea: a hub that grows past 59 lines is split (the builder of train-student included)."""
    long = [f"{rel}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for rel, tree in _modules() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 >= 60]
    assert not long, "\n".join(long)
