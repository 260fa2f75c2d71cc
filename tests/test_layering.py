"""The package's layers, read from the source with ``ast`` (every import, also inside functions and
``TYPE_CHECKING`` blocks): the model and data layers know nothing of MLflow, and only the tracking and run-query
modules import mlflow — and the pyfunc model (its module and its model-from-code file), which only they load."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import recipeset

PACKAGE = Path(recipeset.__file__).parent
MLFLOW_MODULES = {"recipeset/tracking.py", "recipeset/runs.py"}  # the only importers of mlflow, lazily
# the MLflow pyfunc model: a PythonModel subclass and the file MLflow runs on load, imported by the tracker only
PYFUNC_MODULES = {"recipeset/pyfunc.py", "recipeset/resources/pyfunc_model.py"}
TRACKING_LAYER = ("recipeset.tracking", "recipeset.runs", "recipeset.pyfunc", "mlflow")


def _files() -> dict[str, Path]:
    return {f"recipeset/{p.relative_to(PACKAGE).as_posix()}": p for p in sorted(PACKAGE.rglob("*.py"))}


def _module_name(rel: str) -> str:
    name = rel.removesuffix(".py").replace("/", ".")
    return name.removesuffix(".__init__")


def imports(rel: str) -> set[str]:
    """Every module ``rel`` imports, fully qualified (``from recipeset import runs`` gives ``recipeset.runs``)."""
    path = _files()[rel]
    package = _module_name(rel) if path.name == "__init__.py" else _module_name(rel).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _is(module: str, target: str) -> bool:
    return module == target or module.startswith(target + ".")


def test_the_parser_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "recipeset"
    (pkg / "models").mkdir(parents=True)
    (pkg / "models" / "x.py").write_text("def f():\n    from recipeset import tracking\n    from ..runs import a\n"
                                         "    import mlflow.artifacts\n")
    monkeypatch.setattr(f"{__name__}.PACKAGE", pkg)
    found = imports("recipeset/models/x.py")
    assert {"recipeset.tracking", "recipeset.runs", "mlflow.artifacts"} <= found


@pytest.mark.parametrize("layer", ["recipeset/models/", "recipeset/data/"])
def test_models_and_data_do_not_depend_on_tracking(layer):
    files = [rel for rel in _files() if rel.startswith(layer)]
    assert files
    bad = {rel: sorted(m for m in imports(rel) if any(_is(m, t) for t in TRACKING_LAYER)) for rel in files}
    assert not {rel: mods for rel, mods in bad.items() if mods}


def test_only_tracking_runs_and_the_pyfunc_model_import_mlflow():
    importers = {rel for rel in _files() if any(_is(m, "mlflow") for m in imports(rel))}
    assert importers == MLFLOW_MODULES | PYFUNC_MODULES


def test_the_pyfunc_module_is_imported_by_the_tracker_only_and_lazily():
    """``recipeset.pyfunc`` imports mlflow at its top (its class derives from ``PythonModel``): only the tracker
    imports it, inside a function (and the model file MLflow runs)."""
    importers = {rel for rel in _files() if any(_is(m, "recipeset.pyfunc") for m in imports(rel))}
    assert importers == {"recipeset/tracking.py", "recipeset/resources/pyfunc_model.py"}
    tree = ast.parse(_files()["recipeset/tracking.py"].read_text(encoding="utf-8"))
    top = [n.module for n in tree.body if isinstance(n, ast.ImportFrom)]
    assert "recipeset.pyfunc" not in top


def test_mlflow_is_imported_lazily():
    """``recipeset --help`` stays fast: no module-level ``import mlflow`` (only inside functions or for typing)."""
    for rel in MLFLOW_MODULES:
        tree = ast.parse(_files()[rel].read_text(encoding="utf-8"))
        top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
        assert not [m for m in names if _is(m, "mlflow")], rel


def test_plots_and_signals_know_nothing_of_mlflow_or_tracking():
    for rel in ("recipeset/plots.py", "recipeset/signals.py"):
        assert not [m for m in imports(rel) if any(_is(m, t) for t in TRACKING_LAYER)], rel


def test_study_uses_no_private_name_of_another_module():
    """No ``from recipeset.x import _name`` and no ``module._name`` on an imported recipeset module."""
    rel = "recipeset/study.py"
    tree = ast.parse(_files()[rel].read_text(encoding="utf-8"))
    modules: set[str] = set()  # local names bound to recipeset modules
    private = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("recipeset"):
            private += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
            modules.update(a.asname or a.name for a in node.names if (PACKAGE / a.name).exists()
                           or (PACKAGE / f"{a.name}.py").exists())
        elif isinstance(node, ast.Import):
            modules.update(a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith("recipeset"))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name) and node.value.id in modules):
            private.append(f"{node.value.id}.{node.attr}")
    assert not private
