"""spark-submit.sh: the command it builds (nothing secret on it), --help, config errors, and a real submit of
land-demo."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipelines.core.config import REPO_ROOT
from tests.support.proctree import TreeWatcher, is_loopback, other_ipv4
from tests.support.secrets import AZURE_KEY, SECRET_SETTINGS, SECRETS_ENV, CommandLines, leaks_in

SCRIPT = str(REPO_ROOT / "spark-submit.sh")


def _launch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipelines.submit", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=300)


def test_dry_run_prints_full_command(tmp_path: Path) -> None:
    """The command line, then what goes through the private files (the Spark settings, the job's --set overrides),
    secrets masked: nothing but the files' paths is an argument."""
    secret = "Dq8Ws3NvK"
    res = _launch("ingest", "--set", "spark.master=local[3]", "--set",
                  f"spark.conf.spark.hadoop.fs.s3a.secret.key={secret}", "--dry-run",
                  env={"PIPELINE_HOME": str(tmp_path)})
    assert res.returncode == 0, res.stderr
    cmd, *listing = res.stdout.strip().splitlines()
    text = "\n".join(listing)
    assert "spark-submit --master 'local[3]' --deploy-mode client" in cmd
    assert f"--py-files {tmp_path}/dist/project-code.zip {REPO_ROOT}/jobs/ingest.py --env local" in cmd
    assert cmd.endswith(f"--conf-dir {REPO_ROOT}/conf")
    assert "--properties-file '<private>/spark.properties' --load-spark-defaults" in cmd
    assert "--conf" not in shlex.split(cmd) and "--set" not in cmd  # settings and overrides are off the command
    assert f"  spark.pyspark.python={sys.executable}" in text
    assert "log4j2.configurationFile" in text and "  spark.master=local[3]" in text
    assert "  spark.databricks.delta.snapshotPartitions=3" in text  # one Delta log-replay task per core
    assert "  spark.hadoop.fs.s3a.secret.key=***" in text and "  spark.conf.spark.hadoop.fs.s3a.secret.key=***" in text
    assert secret not in res.stdout + res.stderr
    assert not (tmp_path / "dist").exists()  # a dry run builds nothing


def test_help_and_errors() -> None:
    assert ("jobs: features, history, ingest, land-demo, lineage, maintain, monitor, run-all, score, train"
            in _launch("--help").stdout)
    res = _launch("ingest", "--help")
    assert res.returncode == 0 and "--sources" in res.stdout and "exit codes" in res.stdout
    bad = _launch("ingest", "--set", "spark.mastr=x", "--dry-run")
    assert bad.returncode == 2 and "spark.mastr: unknown key [--set]" in bad.stderr
    assert _launch("nope").returncode == 2


def test_real_submit_land_demo(tmp_path: Path) -> None:
    """A real submit of land-demo, with two secret settings (one read from the environment, one typed on --set)
    while the environment exports another SPARK_LOCAL_IP, as an edge node may: no command line on the machine but
    the user's own carries a secret (every process sampled every 0.2 s: spark-submit, its JVM, the job's Python),
    the job's process tree listens on loopback only (the Spark UI included), and the private files are gone."""
    other = other_ipv4()
    env = {**os.environ, "PIPELINE_HOME": str(tmp_path), "TMPDIR": str(tmp_path), **SECRETS_ENV}
    if other:
        env["SPARK_LOCAL_IP"] = other
    typed = f"spark.conf.spark.hadoop.fs.azure.account.key.typed.dfs.core.windows.net={AZURE_KEY}"
    proc = subprocess.Popen([SCRIPT, "land-demo", "--set", "demo.fraction=0.01", "--set", SECRET_SETTINGS[0],
                             "--set", typed], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    with CommandLines(exclude={proc.pid}) as lines:
        tree = TreeWatcher(proc.pid, interval=0.2).start()
        try:
            out, _ = proc.communicate(timeout=600)
        finally:
            tree.stop()
    assert proc.returncode == 0, out[-3000:]
    months = sorted(p.name for p in (tmp_path / "tables" / "landing" / "flights").iterdir())
    assert months == [f"flights_2013_{m:02d}.csv" for m in range(1, 13)]
    assert "stage=land-demo.flights rows=3368" in out  # PythonRunner merges the streams
    assert (tmp_path / "dist" / "project-code.zip").exists()
    assert lines.samples > 10 and lines.leaks() == [], "\n".join(lines.leaks())
    assert leaks_in("output", out) == []
    assert list(tmp_path.glob("pipeline-submit-*")) == []  # the private folder is removed after the run
    ui = re.search(r"spark ui: http://127\.0\.0\.1:(\d+)", out)
    assert ui, out[-3000:]
    listeners = {(s.ip, s.port) for s in tree.listeners}
    assert any(port == int(ui[1]) for _, port in listeners), listeners  # the UI's listener was seen
    assert all(is_loopback(ip) for ip, _ in listeners), f"SPARK_LOCAL_IP={other}: {sorted(listeners)}"


def test_stopped_submit_stops_its_job_and_removes_its_files(tmp_path: Path) -> None:
    """SIGTERM to spark-submit.sh (a scheduler's kill or timeout) is passed on: the job's processes end and the
    private files are removed."""
    env = {**os.environ, "PIPELINE_HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([SCRIPT, "land-demo", "--set", "demo.fraction=0.01"], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    tree = TreeWatcher(proc.pid, interval=0.1).start()
    try:
        deadline = time.monotonic() + 180
        while not any("jobs/land_demo.py" in cmd for cmd in tree.seen.values()) and time.monotonic() < deadline:
            assert proc.poll() is None
            time.sleep(0.1)
        assert list(tmp_path.glob("pipeline-submit-*/job.json")), "the job's Python did not start"
        os.kill(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
        left = tree.wait_gone(60)
    finally:
        tree.stop()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0, out[-2000:]
    assert list(tmp_path.glob("pipeline-submit-*")) == []
    assert left == [], left


def test_yarn_dry_run_command(tmp_path: Path) -> None:
    """Cluster mode: the driver's container gets the tracking URI (with its password) and the overrides from the
    job file that YARN localizes (--files), not from an environment variable, which YARN would write into the
    container's launch script and copy into its logs."""
    secret = "Hq4Zp7RmW"
    env = {"MLFLOW_TRACKING_URI": f"http://u:{secret}@mlflow.example:5000", "PIPELINE_DIST": str(tmp_path / "dist"),
           "SPARK_DEPLOY_MODE": "cluster", "YARN_QUEUE": "ml", "PIPELINE_HOME": "hdfs:///ws", "USER": "alice",
           "CLUSTER_PYTHON_PREFIX": "/usr"}
    res = _launch("ingest", "--env", "yarn", "--set", "spark.num_executors=4", "--dry-run", env=env)
    assert res.returncode == 0, res.stderr
    cmd, *listing = res.stdout.strip().splitlines()
    text = "\n".join(listing)
    dist = tmp_path / "dist"
    for part in ["--master yarn --deploy-mode cluster", "--queue ml", "--num-executors 4", "--executor-cores 2",
                 f"--jars {REPO_ROOT}/.jars/delta/delta-spark_2.13-4.0.1.jar,"
                 f"{REPO_ROOT}/.jars/delta/delta-storage-4.0.1.jar",
                 f"--archives {dist}/pyenv.tar.gz#environment,{dist}/conf.zip#pipeline-conf",
                 "--files <private>/job.json#pipeline-job.json",
                 f"--py-files {dist}/spark_ml_pipeline-0.1.0-py3-none-any.whl {REPO_ROOT}/jobs/ingest.py --env yarn",
                 "--conf-dir pipeline-conf"]:
        assert shlex.join(part.split()) in cmd, part
    for line in ["spark.yarn.appMasterEnv.PIPELINE_SUBMITTED=1", "spark.yarn.appMasterEnv.PIPELINE_JOB_FILE="
                 "pipeline-job.json", "spark.pyspark.python=./environment/bin/python",
                 "spark.yarn.appMasterEnv.PYSPARK_PYTHON=./environment/bin/python",
                 "spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension", "spark.num_executors=4"]:
        assert f"  {line}" in text, line
    # what the config reads from the environment goes to the driver's container (names shown: values may be secret)
    (names,) = [ln.split(": ", 1)[1].split(", ") for ln in listing if ln.startswith("  the driver's environment: ")]
    assert {"CLUSTER_PYTHON_PREFIX", "MLFLOW_TRACKING_URI", "PIPELINE_HOME", "SPARK_DEPLOY_MODE", "USER",
            "YARN_QUEUE"} <= set(names)
    assert "appMasterEnv.MLFLOW_TRACKING_URI" not in res.stdout and secret not in res.stdout + res.stderr
    assert "--packages" not in cmd  # nothing is downloaded when a job starts
    assert "snapshotPartitions" not in text  # a cluster keeps Delta's own default
    missing = _launch("ingest", "--env", "yarn", "--dry-run", env={"MLFLOW_TRACKING_URI": ""})
    assert missing.returncode == 2 and "MLFLOW_TRACKING_URI is not set" in missing.stderr


def test_yarn_artifacts_are_real(tmp_path: Path) -> None:
    """The wheel imports the project, the conf archive holds conf/, venv-pack packs a real environment."""
    import tarfile
    import zipfile

    from pipelines.submit import build_conf_archive, build_wheel, pack_environment

    wheel = build_wheel(tmp_path / "dist")
    names = zipfile.ZipFile(wheel).namelist()
    assert "pipelines/submit.py" in names and "jobs/ingest.py" in names and "features/__init__.py" in names
    probe = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                            "import pipelines.stages.ingest.run as m, jobs.ingest; print(m.__file__)", str(wheel)],
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
