"""The code's shape, checked on the source: stages never branch on the flow's kind, flows are reached only through
the registry, and the stage library does not depend on the application."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from pipelines.core.config import REPO_ROOT

pytestmark = pytest.mark.fast  # the fast tier: no JVM, cluster or training process

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


def test_only_a_flow_imports_its_own_folder() -> None:
    """A flow's folder is private: everything else reaches it through pipelines.flows.get_flow."""
    assert len(CODE) > 40
    for kind in ("tabular", "image", "text"):
        package = f"pipelines.flows.{kind}"
        users = [_rel(p) for p in CODE if not _rel(p).startswith(f"pipelines/flows/{kind}/")
                 and any(m == package or m.startswith(package + ".") for m in _imports(p))]
        assert users == [], f"{package} imported from outside its folder: {users}"


def test_no_branch_on_the_flow_kind() -> None:
    """No `if flow == ...`: a new flow is a folder and a conf profile, never a new branch in a stage."""
    pattern = re.compile(r"(?<!\w)flow(\.kind)?\s*(==|!=|in\b)|kind\s*==\s*[\"'](tabular|image|text)[\"']")
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
