"""The chain on a real standalone cluster (master + two one-core workers on 127.0.0.1) logging to a real
MLflow tracking server, submitted through spark-submit.sh --env standalone."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import mlflow
import pytest
from deltalake import DeltaTable
from mlflow.tracking import MlflowClient

from pipelines.core.config import REPO_ROOT
from tests.support.servers import mlflow_server, standalone_cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    with standalone_cluster(tmp_path_factory.mktemp("spark-standalone")) as url:
        yield url


def test_chain_on_standalone_with_tracking_server(cluster: str, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    with mlflow_server(ws) as uri:
        env = {**os.environ, "PIPELINE_HOME": str(ws), "SPARK_MASTER_URL": cluster, "MLFLOW_TRACKING_URI": uri}
        res = subprocess.run([str(REPO_ROOT / "spark-submit.sh"), "run-all", "--env", "standalone",
                              "--set", "demo.fraction=0.01"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                             timeout=900)
        out = res.stdout + res.stderr
        assert res.returncode == 0, out[-4000:]
        assert "stage=ingest.flights files_new=12" in out and "rows_ok=3368" in out
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("spark-ml-pipeline")
        runs = client.search_runs([exp.experiment_id], "tags.job = 'ingest'")
        assert len(runs) == 1 and runs[0].data.metrics["flights.rows_ok"] == 3368
        assert runs[0].data.tags["env"] == "standalone"
        mlflow.set_tracking_uri(uri)
        report = mlflow.artifacts.load_text(f"runs:/{runs[0].info.run_id}/ingest_report.json")
        assert '"rows_quarantined": 0' in report
    assert DeltaTable(str(ws / "tables" / "bronze" / "flights")).version() == 0
