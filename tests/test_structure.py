"""The code's shape, checked on the source: stages never branch on the flow's kind, flows are reached only through
the registry, and the stage library does not depend on the application."""

from __future__ import annotations

import ast
import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipelines.core.config import REPO_ROOT, FlowConf, flow_kinds, flow_model, flow_package
from pipelines.flows import get_flow

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


def test_no_module_shadows_a_top_level_package() -> None:
    """A folder that lands on sys.path (the repository, jobs/ when a job runs as a script) holds no module named like
    a top-level package, except jobs/features.py, which jobs/__init__.py takes off sys.path (the next test)."""
    packages = {p.name for p in REPO_ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert packages >= {"jobs", "pipelines", "features"}
    assert {p.stem for p in REPO_ROOT.glob("*.py")} & packages == set()
    assert {p.stem for p in (REPO_ROOT / "jobs").glob("*.py")} & packages == {"features"}


def test_the_features_job_run_as_a_script_imports_the_features_package(tmp_path: Path) -> None:
    """`python jobs/features.py` (sys.path[0] = jobs/), and the same script in a YARN container's working folder
    (sys.path[0] = that folder, the script beside whatever was localized): `features` is still the package."""
    container = tmp_path / "container"
    container.mkdir()
    shutil.copy(REPO_ROOT / "jobs" / "features.py", container / "features.py")
    code = ("import runpy, sys\n"
            "sys.path[0] = sys.argv[1]; script = sys.argv[1] + '/features.py'; sys.argv = [script, '--help']\n"
            "try:\n    runpy.run_path(script, run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "import features, features.cyclical\nprint(features.__file__)")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    runs = [subprocess.Popen([sys.executable, "-c", code, str(folder)], cwd=folder, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for folder in (REPO_ROOT / "jobs", container)]
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
        assert out.strip().splitlines()[-1] == str(REPO_ROOT / "features" / "__init__.py"), out


JOBS = sorted(p.stem for p in (REPO_ROOT / "jobs").glob("*.py") if p.stem not in ("__init__", "common"))
STAGES = REPO_ROOT / "pipelines" / "stages"
SHARED = {"inputs"}  # stage helpers more than one job reads with, no job of their own


def test_every_job_has_one_stage_home() -> None:
    """The name a user types is the job: jobs/<job>.py, its stage pipelines/stages/<job>.py or stages/<job>/ (one,
    never both), and every stage belongs to a job. The front door offers exactly these jobs."""
    from pipelines.submit import available_jobs

    assert len(JOBS) >= 10
    homes = {job: [h for h in (STAGES / f"{job}.py", STAGES / job / "__init__.py") if h.is_file()] for job in JOBS}
    assert {job: [_rel(h) for h in found] for job, found in homes.items() if len(found) > 1} == {}
    assert {job for job, found in homes.items() if not found} == set()
    stages = {p.stem for p in STAGES.glob("*.py")} | {p.parent.name for p in STAGES.glob("*/__init__.py")}
    assert stages - {"__init__"} - SHARED - set(JOBS) == set()
    assert {name.replace("-", "_") for name in available_jobs()} == set(JOBS)


FRONT_DOORS = {"pipelines/core/notebook.py"}


def test_layers() -> None:
    """jobs -> stages -> flows, training -> core: core imports no layer above it, stages never import a job, and
    the front doors (pipelines/submit.py, and the notebooks' pipelines/core/notebook.py, which builds the flow) sit
    above them all."""
    above = {"core": ("pipelines.stages", "pipelines.flows", "pipelines.training", "pipelines.submit", "jobs"),
             "stages": ("jobs", "pipelines.submit"), "flows": ("pipelines.stages", "jobs", "pipelines.submit"),
             "training": ("pipelines.stages", "jobs", "pipelines.submit")}
    bad = {}
    for layer, banned in above.items():
        for path in sorted((REPO_ROOT / "pipelines" / layer).rglob("*.py")):
            if _rel(path) in FRONT_DOORS:
                continue
            hits = sorted(m for m in _imports(path) if any(m == b or m.startswith(b + ".") for b in banned))
            if hits:
                bad[_rel(path)] = hits
    assert bad == {}


def test_no_issue_numbers_or_book_references_in_code() -> None:
    """Comments and docstrings explain the code, not the project's history."""
    pattern = re.compile(r"\bissue\s*#?\d|\(issue|\bthe book|\bbook'?s\b|\bchapter\s*\d|tools/bootstrap", re.I)
    hits = [f"{_rel(p)}:{i}: {line.strip()}" for p in CODE for i, line in enumerate(p.read_text().splitlines(), 1)
            if pattern.search(line)]
    assert hits == []


def test_the_streaming_scorer_reads_files_with_the_ingest_parser_only() -> None:
    """score --stream parses landing files as ingest does, and needs nothing else of the ingest stage."""
    imports = _imports(STAGES / "score" / "stream.py")
    ingest = {m for m in imports if m.startswith("pipelines.stages.ingest.")}
    assert ingest and {m.split(".")[3] for m in ingest} == {"parse"}
