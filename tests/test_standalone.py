"""The chain on a real standalone cluster (master + two one-core workers on 127.0.0.1) logging to a real MLflow
tracking server, submitted through spark-submit.sh --env standalone, training with PyTorch (`--set
training.framework=pytorch`: two DistributedDataParallel ranks; the YARN test trains with Horovod). Spark's event
log proves that the barrier training stage ran one task on each executor. The same run carries the secrets check:
the tracking URI holds a password (with '@' and '='), the Spark conf a secret s3a key and an Azure account key (read
from the environment), and none may appear on any process's command line while the run goes (every process of the
machine, sampled every 0.2 s: spark-submit, the driver's JVM and Python, the executors, the training ranks), in
--dry-run, the job's output, MLflow (params, tags, the logged config, artifacts), the event log, the executors' logs
or any file the run leaves."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import mlflow
import pytest
from deltalake import DeltaTable
from mlflow.tracking import MlflowClient

from pipelines.core.config import REPO_ROOT
from tests.chain import FAST_TRAINING, LANDED
from tests.support.secrets import (
    SECRET_SETTINGS,
    SECRETS_ENV,
    CommandLines,
    files_with,
    leaks_in,
    run_group,
    with_password,
)
from tests.support.servers import mlflow_server, standalone_cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """The master URL and the cluster's folder (its daemons' logs, the workers' executor folders)."""
    workdir = tmp_path_factory.mktemp("spark-standalone")
    with standalone_cluster(workdir) as url:
        yield url, workdir


def barrier_executors(event_dir: Path) -> list[set[str]]:
    """For each barrier stage in the event logs: the executor ids its tasks ran on."""
    barrier_stages: set[int] = set()
    executors: dict[int, set[str]] = {}
    for log in (p for p in event_dir.rglob("*") if p.is_file()):
        for line in log.read_text().splitlines():
            ev = json.loads(line)
            if ev["Event"] == "SparkListenerStageSubmitted":
                info = ev["Stage Info"]
                if any(rdd.get("Barrier") for rdd in info.get("RDD Info", [])):
                    barrier_stages.add(info["Stage ID"])
            elif ev["Event"] == "SparkListenerTaskEnd":
                executors.setdefault(ev["Stage ID"], set()).add(ev["Task Info"]["Executor ID"])
    return [executors.get(s, set()) for s in sorted(barrier_stages)]


def test_chain_on_standalone_with_tracking_server(cluster: tuple[str, Path], tmp_path: Path) -> None:
    url, cluster_dir = cluster
    ws = tmp_path / "ws"
    events = tmp_path / "events"
    events.mkdir()
    sets = [f"--set={s}" for s in ["demo.fraction=0.01", LANDED, *FAST_TRAINING, "training.framework=pytorch",
                                   "spark.conf.spark.eventLog.enabled=true",
                                   f"spark.conf.spark.eventLog.dir=file://{events}",
                                   "spark.conf.spark.eventLog.compress=false",  # plain JSON, searchable
                                   "spark.conf.spark.eventLog.rolling.enabled=false", *SECRET_SETTINGS]]
    script = str(REPO_ROOT / "spark-submit.sh")
    with mlflow_server(ws) as uri:
        env = {**os.environ, **SECRETS_ENV, "PIPELINE_HOME": str(ws), "SPARK_MASTER_URL": url,
               "MLFLOW_TRACKING_URI": with_password(uri)}
        with CommandLines() as lines:
            dry = run_group([script, "run-all", "--env", "standalone", *sets, "--dry-run"], env, timeout=300)
            assert dry.returncode == 0, dry.stderr
            assert "spark.hadoop.fs.s3a.secret.key=***" in dry.stdout  # the setting is shown, its value is not
            start = time.monotonic()
            res = run_group([script, "run-all", "--env", "standalone", *sets], env, timeout=1500)
        out = res.stdout + res.stderr
        log = [ln for ln in res.stdout.splitlines() if not ln.lstrip().startswith("at ")]  # drop JVM frames
        assert res.returncode == 0, "job log:\n" + "\n".join(log[-80:]) + f"\nspark log:\n{res.stderr[-2000:]}"
        print(f"run-all on standalone: {time.monotonic() - start:.0f}s, {lines.samples} samples of "
              f"{len(lines.processes)} processes' command lines")
        assert "stage=ingest.flights files_new=12" in out and "rows_ok=3368" in out
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("spark-ml-pipeline")
        ingest_runs = client.search_runs([exp.experiment_id], "tags.job = 'ingest'")
        assert len(ingest_runs) == 1 and ingest_runs[0].data.metrics["flights.rows_ok"] == 3368
        assert ingest_runs[0].data.tags["env"] == "standalone"
        mlflow.set_tracking_uri(uri)
        report = mlflow.artifacts.load_text(f"runs:/{ingest_runs[0].info.run_id}/ingest_report.json")
        assert '"rows_quarantined": 0' in report
        champion = client.get_model_version_by_alias("flight-delay", "champion")
        assert champion.version == "1"
        train = client.get_run(champion.run_id).data  # the PyTorch chain: two DDP ranks, one on each executor
        assert (train.params["framework"], train.params["backend"]) == ("pytorch", "torch-ddp")
        assert train.metrics["identical_weights"] == 1.0 and train.metrics["pyfunc_check_max_abs_diff"] < 1e-5
        scored = client.search_runs([exp.experiment_id], "tags.job = 'score'")[0].data.metrics
        assert scored["rows_scored"] > 0
        runs = client.search_runs([exp.experiment_id])
        assert {r.data.tags["job"] for r in runs} >= {"ingest", "features", "train", "score", "monitor"}
        recorded = json.dumps([[r.data.params, r.data.tags] for r in runs])
    assert DeltaTable(str(ws / "tables" / "bronze" / "flights")).version() == 0
    assert DeltaTable(str(ws / "tables" / "gold" / "predictions")).version() >= 0
    stages = barrier_executors(events)
    assert stages and all(len(s) == 2 for s in stages), stages  # each barrier stage spanned both executors
    assert lines.samples > 100
    leaks = lines.leaks() + leaks_in("MLflow params and tags", recorded)
    for name, text in {"dry-run stdout": dry.stdout, "dry-run stderr": dry.stderr, "stdout": res.stdout,
                       "stderr": res.stderr}.items():
        leaks += leaks_in(name, text)
    leaks += files_with(tmp_path)  # mlflow.db, mlartifacts, event log, tables, checkpoints, server and debug logs
    leaks += files_with(cluster_dir)  # the master's and workers' logs, the executors' stdout and stderr
    assert (ws / "mlflow.db").exists() and list(events.iterdir()) and list(cluster_dir.rglob("stderr"))
    assert leaks == [], "\n".join(leaks)
