"""spark-submit.sh: the command it builds, --help, config errors, and a real submit of land-demo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipelines.core.config import REPO_ROOT

SCRIPT = str(REPO_ROOT / "spark-submit.sh")


def _launch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jobs.launcher", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=300)


def test_dry_run_prints_full_command(tmp_path: Path) -> None:
    res = _launch("ingest", "--set", "spark.master=local[3]", "--dry-run", env={"PIPELINE_HOME": str(tmp_path)})
    assert res.returncode == 0, res.stderr
    cmd = res.stdout.strip()
    assert "spark-submit --master 'local[3]' --deploy-mode client" in cmd
    assert f"--py-files {tmp_path}/dist/project-code.zip {REPO_ROOT}/jobs/ingest.py --env local" in cmd
    assert cmd.endswith(f"--conf-dir {REPO_ROOT}/conf")
    assert f"--conf spark.pyspark.python={sys.executable}" in cmd
    assert "log4j2.configurationFile" in cmd and "--set 'spark.master=local[3]'" in cmd
    assert not (tmp_path / "dist").exists()  # a dry run builds nothing


def test_help_and_errors() -> None:
    assert "jobs: land-demo, ingest" in _launch("--help").stdout
    res = _launch("ingest", "--help")
    assert res.returncode == 0 and "--sources" in res.stdout and "exit codes" in res.stdout
    bad = _launch("ingest", "--set", "spark.mastr=x", "--dry-run")
    assert bad.returncode == 2 and "spark.mastr: unknown key [--set]" in bad.stderr
    assert _launch("nope").returncode == 2


def test_real_submit_land_demo(tmp_path: Path) -> None:
    res = subprocess.run([SCRIPT, "land-demo", "--set", "demo.fraction=0.01"], cwd=REPO_ROOT, capture_output=True,
                         text=True, env={**os.environ, "PIPELINE_HOME": str(tmp_path)}, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    months = sorted(p.name for p in (tmp_path / "tables" / "landing" / "flights").iterdir())
    assert months == [f"flights_2013_{m:02d}.csv" for m in range(1, 13)]
    assert "stage=land-demo.flights rows=3368" in res.stdout + res.stderr  # PythonRunner merges the streams
    assert (tmp_path / "dist" / "project-code.zip").exists()
