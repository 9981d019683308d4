"""PyTorch training (training.framework pytorch): the network, its checkpoint state and early stopping as pure
pieces (no JVM), then real two-rank DistributedDataParallel trainings in the shared Spark session."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import SparkSession

from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore
from pipelines.flows import get_flow
from pipelines.stages.train import run_train
from pipelines.training import pyfunc
from pipelines.training.registry import CHAMPION
from tests.test_train import RAW, SMALL, make_features_run

TORCH = ("training.framework=pytorch",)


@pytest.fixture
def torch_cfg(spark: SparkSession, make_cfg: Callable[..., Config], store: DeltaStore) -> Callable[..., Config]:
    made: dict[str, str] = {}

    def make(*overrides: str) -> Config:
        cfg = make_cfg(*SMALL, *TORCH, *overrides)
        if "run" not in made:
            made["run"] = make_features_run(spark, cfg, store)
        return cfg

    return make


def test_two_torch_ranks_train_log_register_and_score(spark: SparkSession, torch_cfg: Callable[..., Config],
                                                     store: DeltaStore) -> None:
    cfg = torch_cfg("training.baseline.enabled=true", "training.baseline.kinds=[logreg]",
                    "training.baseline.reg_params=[0.0]", "training.baseline.elastic_net_params=[0.0]")
    result = run_train(spark, cfg, store, get_flow(cfg))

    assert [w.rank for w in result.workers] == [0, 1] and {w.size for w in result.workers} == {2}
    assert len({w.weights_sha256 for w in result.workers}) == 1, "ranks ended with different weights"
    assert result.test["roc_auc"] > 0.7, result.test
    client = MlflowClient()
    run = client.get_run(result.run_id)
    epochs = result.workers[0].epochs_completed
    assert len(client.get_metric_history(result.run_id, "val_auc")) == epochs
    assert run.data.params["framework"] == "pytorch" and run.data.params["backend"] == "torch-ddp"
    meta = pyfunc.model_meta(f"models:/{cfg.mlflow.registered_model}@{CHAMPION}")
    assert meta["framework"] == "pytorch" and meta["vector_size"] == len(RAW)
    assert np.isfinite(run.data.metrics["pyfunc_check_max_abs_diff"])
