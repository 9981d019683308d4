"""The Airflow DAG's and the crontab's commands are real: rendered, they build valid spark-submit commands."""

from __future__ import annotations

import re
import subprocess

import pytest

from pipelines.core.config import REPO_ROOT
from pipelines.orchestration import airflow_dag


def _render(template: str) -> str:
    """What Airflow's Jinja would make of the DAG's template for env local on 2013-12-05."""
    out = re.sub(r"\{\{ var\.value\.get\('spark_ml_pipeline_dir', '[^']*'\) \}\}", str(REPO_ROOT), template)
    out = re.sub(r"\{\{ var\.value\.get\('spark_ml_pipeline_env', '[^']*'\) \}\}", "local", out)
    return out.replace("{{ ds }}", "2013-12-05")


@pytest.mark.parametrize("task", sorted(airflow_dag.TASKS))
def test_dag_task_builds_a_spark_submit_command(task: str) -> None:
    cmd = _render(airflow_dag.TASKS[task])
    assert "{{" not in cmd
    res = subprocess.run(["bash", "-c", cmd + " --dry-run"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    args = "--env local" + ("" if task == "maintain" else " --date 2013-12-05")
    assert f"jobs/{task}.py {args} --conf-dir" in res.stdout


def test_dag_scores_monitors_then_maintains() -> None:
    assert set(airflow_dag.TASKS) == {"score", "monitor", "maintain"}
    assert airflow_dag.UPSTREAM == {"monitor": "score", "maintain": "monitor"}
    assert airflow_dag.TRIGGER_RULES["maintain"] == "all_done"  # a drift alert does not skip maintenance


def _cron_lines() -> list[str]:
    return [ln for ln in (REPO_ROOT / "conf" / "schedule" / "crontab").read_text().splitlines()
            if ln and not ln.startswith("#") and "=" not in ln.split()[0]]


def test_crontab_line_runs_score_then_monitor() -> None:
    line = _cron_lines()[0]
    fields = line.split(maxsplit=5)
    assert fields[:5] == ["0", "6", "*", "*", "*"]
    command = fields[5].replace("\\%", "%")
    assert subprocess.run(["bash", "-n", "-c", command], capture_output=True).returncode == 0
    assert re.findall(r"spark-submit\.sh (\w+)", command) == ["score", "monitor"]
    assert re.search(r"spark-submit\.sh score .* && \./spark-submit\.sh monitor", command)  # monitor after score
    assert "mkdir -p workspace/logs" in command  # the log folder exists before the first redirect


def test_crontab_runs_maintain_weekly() -> None:
    fields = _cron_lines()[1].split(maxsplit=5)
    assert fields[:5] == ["0", "7", "*", "*", "0"]
    assert subprocess.run(["bash", "-n", "-c", fields[5]], capture_output=True).returncode == 0
    assert re.findall(r"spark-submit\.sh (\w+)", fields[5]) == ["maintain"]
    assert len(_cron_lines()) == 2
