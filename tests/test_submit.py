"""spark-submit.sh: the command it builds, --help, config errors, and a real submit of land-demo."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from pipelines.core.config import REPO_ROOT

SCRIPT = str(REPO_ROOT / "spark-submit.sh")


def _launch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipelines.core.submit", *args], cwd=REPO_ROOT, capture_output=True,
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
    assert "--conf spark.databricks.delta.snapshotPartitions=3" in cmd  # one Delta log-replay task per core
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


def test_yarn_dry_run_command(tmp_path: Path) -> None:
    env = {"MLFLOW_TRACKING_URI": "http://mlflow.example:5000", "PIPELINE_DIST": str(tmp_path / "dist"),
           "SPARK_DEPLOY_MODE": "cluster", "YARN_QUEUE": "ml"}
    res = _launch("ingest", "--env", "yarn", "--set", "spark.num_executors=4", "--dry-run", env=env)
    assert res.returncode == 0, res.stderr
    cmd = res.stdout.strip()
    dist = tmp_path / "dist"
    for part in ["--master yarn --deploy-mode cluster", "--queue ml", "--num-executors 4", "--executor-cores 2",
                 f"--jars {REPO_ROOT}/.jars/delta/delta-spark_2.13-4.0.1.jar,"
                 f"{REPO_ROOT}/.jars/delta/delta-storage-4.0.1.jar",
                 "--conf spark.yarn.appMasterEnv.MLFLOW_TRACKING_URI=http://mlflow.example:5000",
                 "--conf spark.yarn.appMasterEnv.PIPELINE_SUBMITTED=1",
                 f"--archives {dist}/pyenv.tar.gz#environment,{dist}/conf.zip#pipeline-conf",
                 "--conf spark.pyspark.python=./environment/bin/python",
                 "--conf spark.yarn.appMasterEnv.PYSPARK_PYTHON=./environment/bin/python",
                 "--conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension",
                 f"--py-files {dist}/spark_ml_pipeline-0.1.0-py3-none-any.whl {REPO_ROOT}/jobs/ingest.py --env yarn",
                 "--conf-dir pipeline-conf"]:
        assert shlex.join(part.split()) in cmd, part
    assert "--packages" not in cmd  # nothing is downloaded when a job starts
    assert "snapshotPartitions" not in cmd  # a cluster keeps Delta's own default
    missing = _launch("ingest", "--env", "yarn", "--dry-run", env={"MLFLOW_TRACKING_URI": ""})
    assert missing.returncode == 2 and "MLFLOW_TRACKING_URI is not set" in missing.stderr


def test_yarn_artifacts_are_real(tmp_path: Path) -> None:
    """The wheel imports the project, the conf archive holds conf/, venv-pack packs a real environment."""
    import tarfile
    import zipfile

    from pipelines.core.submit import build_conf_archive, build_wheel, pack_environment

    wheel = build_wheel(tmp_path / "dist")
    names = zipfile.ZipFile(wheel).namelist()
    assert "pipelines/core/submit.py" in names and "jobs/ingest.py" in names and "features/__init__.py" in names
    probe = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                            "import pipelines.ingest, jobs.ingest; print(pipelines.ingest.__file__)", str(wheel)],
                           capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0 and str(wheel) in probe.stdout, probe.stderr  # importable from --py-files

    conf = zipfile.ZipFile(build_conf_archive(REPO_ROOT / "conf", tmp_path / "conf.zip")).namelist()
    assert {"base/ingest.yaml", "yarn/spark.yaml", "log4j2.properties"} <= set(conf)

    venv = tmp_path / "smallenv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (venv / "lib" / "python3.11" / "site-packages" / "marker_pkg.py").write_text("VALUE = 42\n")
    archive = pack_environment(venv, tmp_path / "pyenv.tar.gz", "/usr")
    with tarfile.open(archive) as tar:
        members = tar.getnames()
    assert "bin/python" in members and "lib/python3.11/site-packages/marker_pkg.py" in members
    mtime = archive.stat().st_mtime_ns
    assert pack_environment(venv, archive, "/usr").stat().st_mtime_ns == mtime  # unchanged env: reused


def test_delta_spark_without_jars_is_a_set_up_error(tmp_path: Path) -> None:
    res = _launch("ingest", "--set", "storage.engine=delta-spark", "--dry-run",
                  env={"JARS_DIR": str(tmp_path / "no-jars"), "DELTA_JARS": ""})
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "./bootstrap.sh" in res.stderr and "storage.engine=embedded" in res.stderr
