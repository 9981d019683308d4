"""train --search (Optuna trials, each a real barrier-mode Horovod training, pruned through the control channel)
and the MLlib baselines (logreg, GBT, RF with TrainValidationSplit) of its retrain, on the session's chain
workspace (1% of flights): one search of 3 trials x 2 epochs serves every test here."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from jobs import train as train_job
from pipelines.core.config import Config, ConfigError
from pipelines.core.delta import DeltaStore
from pipelines.core.recorder import latest_features_record
from pipelines.training.registry import CHALLENGER, CHAMPION
from pipelines.training.search import with_params
from tests.chain import FAST_TRAINING, chain_config

MODEL = "flight-delay-search"  # its own registered model: the chain's champion (v1) stays what other tests read
SEARCH = ["training.search.trials=3", "training.search.epochs=2", "training.search.pruner.startup_trials=1",
          "training.search.pruner.warmup_epochs=0", "training.search.space.hidden_units=[[8], [16]]",
          "training.search.space.batch_size=[32, 64]",
          "training.search.space.learning_rate={low: 0.0001, high: 0.01, log: true}",
          "training.baseline.enabled=true", "training.baseline.kinds=[logreg, gbt, rf]",
          "training.baseline.reg_params=[0.0]", "training.baseline.elastic_net_params=[0.0]",
          "training.baseline.gbt={max_iter: 5, max_depths: [2, 3], step_sizes: [0.1]}",
          "training.baseline.rf={num_trees: [5, 10], max_depths: [3]}", f"mlflow.registered_model={MODEL}"]


@pytest.fixture(scope="module")
def searched(chain: Config) -> dict[str, Any]:
    """Run `train --search` through the job's main on the chain's features; the parent run and its children."""
    cfg = chain_config(chain.storage.workspace, *SEARCH)
    argv = ["--search", *[f"--set={o}" for o in (f"storage.workspace={chain.storage.workspace}",
                                                 "demo.fraction=0.01", *FAST_TRAINING, *SEARCH)]]
    assert train_job.main(argv) == 0
    mlflow.set_tracking_uri(cfg.tracking_uri)
    parent = mlflow.search_runs(search_all_experiments=True, filter_string="tags.job = 'train.search'",
                                output_format="list", order_by=["attributes.start_time DESC"])[0]
    children = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return {"cfg": cfg, "parent": parent, "children": children}


def _by_job(runs: list[Any], job: str) -> list[Any]:
    return [r for r in runs if r.data.tags.get("job") == job]


def test_search_space_is_typed_config(make_cfg: Callable[..., Config]) -> None:
    cfg = make_cfg("training.search.trials=2")
    assert cfg.training.search.trials == 2 and cfg.training.search.space.learning_rate.log
    for bad, key in [("training.search.space.learning_rate={low: 0.0, high: 0.1, log: true}",
                      "training.search.space.learning_rate"),
                     ("training.search.space.dropout={low: 0.1, high: 1.5}", "training.search.space.dropout"),
                     ("training.search.space.hidden_units=[[]]", "training.search.space.hidden_units"),
                     ("training.search.trials=0", "training.search.trials"),
                     ("training.search.space.momentum=[0.9]", "training.search.space.momentum"),
                     ("training.baseline.kinds=[xgboost]", "training.baseline.kinds")]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            make_cfg(bad)
    tuned = with_params(cfg.training, {"learning_rate": 0.002, "hidden_units": [32, 8], "dropout": 0.2,
                                       "batch_size": 128}, epochs=3)
    assert (tuned.optimizer.learning_rate, tuned.network.mlp.hidden_units, tuned.network.mlp.dropout,
            tuned.batch_size, tuned.epochs) == (0.002, [32, 8], 0.2, 128, 3)


def test_search_trials_are_nested_runs_and_the_best_retrains_and_registers(searched: dict[str, Any]) -> None:
    parent, children = searched["parent"], searched["children"]
    trials = _by_job(children, "train.trial")
    assert len(trials) == 3
    shown = ("learning_rate", "hidden_units", "dropout", "batch_size")
    assert len({tuple(t.data.params[k] for k in shown) for t in trials}) == 3, "trials repeated a configuration"
    client = MlflowClient()
    for t in trials:
        state = t.data.tags["state"]
        history = client.get_metric_history(t.info.run_id, "val_auc")
        assert state in ("COMPLETE", "PRUNED") and history, (state, t.data.tags)
        assert [m.step for m in history] == list(range(len(history)))
        if state == "COMPLETE":
            assert 0.0 < t.data.metrics["validation_roc_auc"] <= 1.0  # 2 epochs on 1%: near chance
            assert len(history) == t.data.metrics["epochs_completed"] <= 2
        else:  # pruned after an epoch it reported: fewer epochs than its budget, no final value
            assert int(t.data.tags["pruned_after_epoch"]) == len(history) - 1 < 2
            assert "validation_roc_auc" not in t.data.metrics
    assert int(parent.data.metrics["trials_pruned"]) == sum(t.data.tags["state"] == "PRUNED" for t in trials)

    complete = [t for t in trials if t.data.tags["state"] == "COMPLETE"]
    best = max(complete, key=lambda t: t.data.metrics["validation_roc_auc"])
    assert parent.data.tags["best_trial_run_id"] == best.info.run_id

    (retrain,) = _by_job(children, "train")
    assert retrain.data.tags["search_best_trial_run_id"] == best.info.run_id
    p = retrain.data.params
    assert float(p["training.optimizer.learning_rate"]) == float(best.data.params["learning_rate"])
    assert p["training.network.mlp.hidden_units"] == best.data.params["hidden_units"]
    assert float(p["training.network.mlp.dropout"]) == float(best.data.params["dropout"])
    assert p["training.batch_size"] == best.data.params["batch_size"]
    assert p["training.epochs"] == "2"  # training.epochs, not the trials' budget

    versions = client.search_model_versions(f"name = '{MODEL}'")
    (mv,) = [v for v in versions if v.run_id == retrain.info.run_id]
    assert float(mv.tags["test_roc_auc"]) == pytest.approx(retrain.data.metrics["test_roc_auc"])
    holders = {a: str(client.get_model_version_by_alias(MODEL, a).version) for a in (CHAMPION, CHALLENGER)
               if a in client.get_registered_model(MODEL).aliases}
    assert str(mv.version) in holders.values() and retrain.data.tags["alias"] in (CHAMPION, CHALLENGER)
    assert holders[retrain.data.tags["alias"]] == str(mv.version)


def test_baselines_are_tuned_nested_runs_compared_on_the_same_test_rows(spark: SparkSession,
                                                                        searched: dict[str, Any]) -> None:
    cfg = searched["cfg"]
    (retrain,) = _by_job(searched["children"], "train")
    baselines = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                   filter_string=f"tags.mlflow.parentRunId = '{retrain.info.run_id}'")
    by_kind = {b.data.params["kind"]: b for b in baselines}
    assert set(by_kind) == {"logreg", "gbt", "rf"}
    assert by_kind["gbt"].data.params["best.maxDepth"] in ("2", "3")
    assert by_kind["gbt"].data.params["best.stepSize"] == "0.1"
    assert by_kind["rf"].data.params["best.numTrees"] in ("5", "10")
    assert by_kind["rf"].data.params["best.maxDepth"] == "3"
    for b in by_kind.values():
        assert 0.0 < b.data.metrics["test_roc_auc"] <= 1.0 and "validation_roc_auc" in b.data.metrics

    record = latest_features_record(cfg)
    test_rows = (DeltaStore(spark).read(record.table_path, record.table_version)
                 .filter(F.col("label").isNotNull() & (F.col("split") == "test")).count())
    path = mlflow.artifacts.download_artifacts(run_id=retrain.info.run_id,
                                               artifact_path="report/model_comparison.json")
    with open(path) as f:
        report = json.load(f)
    best = max(by_kind, key=lambda k: by_kind[k].data.metrics["validation_roc_auc"])
    assert report["best_baseline"] == best == retrain.data.tags["best_baseline"]
    models = {m["model"]: m for m in report["models"]}
    assert set(models) == {"keras", "logreg", "gbt", "rf"}
    assert {m["test_rows"] for m in models.values()} == {test_rows} and report["same_test_rows"]
    assert models["keras"]["test"] == pytest.approx(retrain.data.metrics["test_roc_auc"])
    assert models[best]["test"] == pytest.approx(retrain.data.metrics["baseline_test_roc_auc"])
    for kind, run in by_kind.items():
        assert models[kind]["test"] == pytest.approx(run.data.metrics["test_roc_auc"])
