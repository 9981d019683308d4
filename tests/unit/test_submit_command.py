"""The spark-submit command a job runs with, built without running it: options from the profile, the shipped code
and job script, Spark settings only in the private properties file, and for a YARN cluster-mode driver the
environment it needs in the job file (secrets never on the command line)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.core.config import REPO_ROOT, load_config
from pipelines.submit import available_jobs, build_command, plan_artifacts

pytestmark = pytest.mark.fast

TOKEN = "s3cr3t-t0ken"


def option(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_local_job_command(tmp_path: Path) -> None:
    cfg = load_config("local", [f"storage.workspace={tmp_path}"])
    sub = build_command("score", cfg, ["--date", "2026-12-07"], plan_artifacts(cfg), ["mlflow.password=x"])
    cmd = sub.command("/private")
    assert option(cmd, "--master") == "local[2]" and option(cmd, "--deploy-mode") == "client"
    assert option(cmd, "--name") == f"{cfg.spark.app_name}-score"
    assert "--executor-memory" not in cmd and "--archives" not in cmd and "--files" not in cmd
    assert option(cmd, "--properties-file") == "/private/spark.properties"
    score = str(REPO_ROOT / available_jobs()["score"])
    assert cmd[-5:] == ["--py-files", str(tmp_path / "dist" / "project-code.zip"), score, "--date", "2026-12-07"]
    assert not any(arg.startswith("spark.") or "=" in arg for arg in cmd)  # settings travel in the private file
    assert sub.properties["spark.pyspark.python"] == sub.properties["spark.pyspark.driver.python"]
    assert sub.properties["spark.driver.extraJavaOptions"].startswith("-Dlog4j2.configurationFile=file:")
    assert sub.properties["spark.sql.session.timeZone"] == "UTC"
    assert sub.overrides == ["mlflow.password=x"] and not sub.remote_driver
    text = sub.describe()
    assert text.splitlines()[0].startswith(cmd[0]) and "<private>/spark.properties" in text
    assert "mlflow.password=***" in text and "mlflow.password=x" not in text


def test_yarn_cluster_driver_gets_its_environment_in_the_job_file(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", TOKEN)
    cfg = load_config("yarn", [f"storage.workspace={tmp_path}", "spark.deploy_mode=cluster"])
    sub = build_command("train", cfg, [], plan_artifacts(cfg), [], REPO_ROOT / "conf")
    cmd = sub.command("/private")
    assert option(cmd, "--master") == "yarn" and option(cmd, "--deploy-mode") == "cluster"
    assert option(cmd, "--executor-memory") == cfg.spark.executor_memory
    assert option(cmd, "--archives") == (f"{tmp_path}/dist/pyenv.tar.gz#environment,"
                                         f"{tmp_path}/dist/conf.zip#pipeline-conf")
    assert option(cmd, "--files") == "/private/job.json#pipeline-job.json"
    assert option(cmd, "--py-files").endswith(".whl")
    assert sub.remote_driver and sub.driver_env["MLFLOW_TRACKING_TOKEN"] == TOKEN
    assert sub.properties["spark.pyspark.python"] == "./environment/bin/python"
    assert sub.properties["spark.yarn.appMasterEnv.PIPELINE_SUBMITTED"] == "1"
    assert not any(TOKEN in arg for arg in cmd) and not any(TOKEN in v for v in sub.properties.values())
    assert TOKEN not in sub.describe() and "the driver's environment: " in sub.describe()
