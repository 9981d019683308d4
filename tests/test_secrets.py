"""Secrets stay in the environment: a whole chain with a password in the tracking server's URI and a secret Spark
setting leaves neither in MLflow (params, tags, the logged config, artifacts), the job's output, --dry-run, the
Spark event log or anywhere in the workspace."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from pipelines.core.config import REPO_ROOT
from tests.chain import FAST_TRAINING
from tests.support.servers import mlflow_server

SCRIPT = str(REPO_ROOT / "spark-submit.sh")
SENTINEL_URI = "Sentinel-Pass-7f3a91"
SENTINEL_KEY = "Sentinel-Key-c44e02"


def test_redact_values_and_config() -> None:
    """Credentials in URIs and secret-named keys are masked; everything else is kept as it was."""
    from pipelines.core.logs import redact, redact_config

    assert redact("http://alice:pw@host:5000/x") == "http://alice:***@host:5000/x"
    assert redact("--conf spark.hadoop.fs.s3a.secret.key=abc --set x=1") == \
        "--conf spark.hadoop.fs.s3a.secret.key=*** --set x=1"
    assert redact("'--set=spark.conf.spark.hadoop.fs.s3a.secret.key=abc' x") == \
        "'--set=spark.conf.spark.hadoop.fs.s3a.secret.key=***' x"
    assert redact("MLFLOW_TRACKING_TOKEN=tok123 ok") == "MLFLOW_TRACKING_TOKEN=*** ok"
    assert redact("spark://127.0.0.1:7077 and s3a://bucket/key") == "spark://127.0.0.1:7077 and s3a://bucket/key"
    cfg = {"mlflow": {"tracking_uri": "https://u:p@h"}, "spark": {"conf": {"spark.hadoop.fs.s3a.access.key": "A",
                                                                            "spark.sql.shuffle.partitions": "4"}}}
    assert redact_config(cfg) == {"mlflow": {"tracking_uri": "https://u:***@h"},
                                  "spark": {"conf": {"spark.hadoop.fs.s3a.access.key": "***",
                                                     "spark.sql.shuffle.partitions": "4"}}}


def _run_group(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run `cmd` in its own process group; on timeout the whole group (the JVM and its Python workers) is killed."""
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _files_with(root: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for f in root.rglob("*"):
        if f.is_file() and not f.is_symlink():
            data = f.read_bytes()
            hits += [f"{f.relative_to(root)}: {n.decode()}" for n in needles if n in data]
    return hits


@pytest.mark.slow
def test_chain_leaves_no_secret_anywhere(tmp_path: Path) -> None:
    """run-all (land, ingest, features, train, score, monitor) against a real tracking server reached with a
    password, with a secret s3a key in the Spark conf and the event log on; then every byte is searched."""
    workspace, events = tmp_path / "workspace", tmp_path / "events"
    workspace.mkdir()
    events.mkdir()
    with mlflow_server(workspace) as uri:
        secret_uri = uri.replace("http://", f"http://pipeline:{SENTINEL_URI}@")
        sets = [f"--set={s}" for s in ["demo.fraction=0.01", "demo.datasets=[flights]", *FAST_TRAINING,
                                       "training.epochs=1", "training.optimizer.warmup_epochs=0",
                                       "mlflow.tracking_uri=${oc.env:MLFLOW_TRACKING_URI}",
                                       f"spark.conf.spark.hadoop.fs.s3a.secret.key={SENTINEL_KEY}",
                                       "spark.conf.spark.eventLog.enabled=true",
                                       "spark.conf.spark.eventLog.compress=false",  # plain JSON, searchable
                                       f"spark.conf.spark.eventLog.dir=file://{events}"]]
        env = {**os.environ, "PIPELINE_HOME": str(workspace), "MLFLOW_TRACKING_URI": secret_uri}
        dry = subprocess.run([SCRIPT, "run-all", *sets, "--dry-run"], cwd=REPO_ROOT, capture_output=True,
                             text=True, env=env, timeout=300)
        assert dry.returncode == 0, dry.stderr
        assert "spark.hadoop.fs.s3a.secret.key" in dry.stdout  # the setting is shown, its value is not
        res = _run_group([SCRIPT, "run-all", *sets], env, timeout=1800)
        assert res.returncode == 0, res.stderr[-3000:]
    assert (workspace / "mlflow.db").exists() and list(events.iterdir())
    needles = [SENTINEL_URI.encode(), SENTINEL_KEY.encode()]
    outputs = {"dry-run stdout": dry.stdout, "dry-run stderr": dry.stderr, "stdout": res.stdout,
               "stderr": res.stderr}
    leaks = [f"{name}: {n.decode()}" for name, text in outputs.items() for n in needles if n.decode() in text]
    leaks += _files_with(tmp_path, needles)  # mlflow.db, mlartifacts, event log, tables, checkpoints, server log
    assert leaks == [], "\n".join(leaks)
