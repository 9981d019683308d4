"""The code's shape, checked on the source: stages never branch on the flow's kind, flows are reached only through
the registry, and the stage library does not depend on the application."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
from types import SimpleNamespace

from pipelines.core.config import REPO_ROOT, FlowConf, flow_kinds, flow_model, flow_package
from pipelines.flows import get_flow

CODE = [p for d in ("jobs", "pipelines", "features", "notebooks") for p in sorted((REPO_ROOT / d).rglob("*.py"))]


def _imports(path: Path) -> set[str]:
    """Every module a file imports (absolute names), including imports inside functions."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


def _flow_kinds() -> list[str]:
    """The project's own flows, from the registry (a test may have registered one of its own beside them)."""
    kinds = [k for k in flow_kinds() if (REPO_ROOT / "pipelines" / "flows" / k).is_dir()]
    assert len(kinds) >= 3
    return kinds


def test_every_flow_folder_registers_its_flow_and_config_model() -> None:
    """A flow is its folder: importing pipelines.flows.<kind> registers its Flow and its config model (a FlowConf
    of that kind, defined in the folder's config.py); the code that validates the `flow:` section names none."""
    for kind in _flow_kinds():
        package = flow_package(kind)
        importlib.import_module(package)
        model = flow_model({"kind": kind})
        assert issubclass(model, FlowConf) and model.__module__ == f"{package}.config", (kind, model)
        assert get_flow(SimpleNamespace(flow=model.model_construct(kind=kind))).kind == kind
    section = [REPO_ROOT / "pipelines" / "core" / "config" / f for f in ("flows.py", "root.py", "loader.py")]
    named = [f"{_rel(p)}:{i}" for p in section for i, line in enumerate(p.read_text().splitlines(), 1)
             for kind in _flow_kinds() if re.search(rf"[\"']{kind}[\"']|flows\.{kind}\b", line)]
    assert named == []


def test_only_a_flow_imports_its_own_folder() -> None:
    """A flow's folder is private: everything else reaches it through pipelines.flows.get_flow."""
    assert len(CODE) > 40
    for kind in _flow_kinds():
        package = flow_package(kind)
        users = [_rel(p) for p in CODE if not _rel(p).startswith(f"pipelines/flows/{kind}/")
                 and any(m == package or m.startswith(package + ".") for m in _imports(p))]
        assert users == [], f"{package} imported from outside its folder: {users}"


def test_no_branch_on_the_flow_kind() -> None:
    """No `if flow == ...`: a new flow is a folder and a conf profile, never a new branch in a stage."""
    kinds = "|".join(map(re.escape, _flow_kinds()))
    pattern = re.compile(rf"(?<!\w)flow(\.kind)?\s*(==|!=|in\b)|kind\s*==\s*[\"']({kinds})[\"']")
    hits = [f"{_rel(p)}:{i}" for p in CODE for i, line in enumerate(p.read_text().splitlines(), 1)
            if pattern.search(line)]
    assert hits == []


def test_stage_library_does_not_import_the_application() -> None:
    """features/ holds pyspark.ml stages that a saved PipelineModel loads anywhere: no pipelines or jobs import."""
    stages = sorted((REPO_ROOT / "features").rglob("*.py"))
    assert stages
    bad = {_rel(p): sorted(m for m in _imports(p) if m.split(".")[0] in ("pipelines", "jobs")) for p in stages}
    assert {k: v for k, v in bad.items() if v} == {}


def test_no_job_script_shadows_a_package() -> None:
    """A job run as a script puts jobs/ first on sys.path: a jobs/<name>.py must not share a package's name."""
    packages = {p.name for p in REPO_ROOT.iterdir() if (p / "__init__.py").is_file()}
    scripts = {p.stem for p in (REPO_ROOT / "jobs").glob("*.py")}
    assert packages >= {"jobs", "pipelines", "features"}
    assert scripts & packages == set()


def test_no_issue_numbers_or_book_references_in_code() -> None:
    """Comments and docstrings explain the code, not the project's history."""
    pattern = re.compile(r"\bissue\s*#?\d|\(issue|\bthe book|\bbook'?s\b|\bchapter\s*\d|tools/bootstrap", re.I)
    hits = [f"{_rel(p)}:{i}: {line.strip()}" for p in CODE for i, line in enumerate(p.read_text().splitlines(), 1)
            if pattern.search(line)]
    assert hits == []
