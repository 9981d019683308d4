"""The run-all stage: the whole chain in one driver, land-demo -> ingest -> features -> train -> score -> monitor,
each stage's own entry point in turn (see jobs/run_all.py for what is scored and monitored)."""

from __future__ import annotations

from pyspark.sql import SparkSession

from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore
from pipelines.core.errors import BadInput, DriftAlert
from pipelines.core.logs import LOG
from pipelines.flows.base import Flow
from pipelines.stages.features import run_features
from pipelines.stages.ingest.run import run_ingest
from pipelines.stages.land_demo import demo_datasets, land_demo
from pipelines.stages.monitor.run import run_monitor
from pipelines.stages.score.batch import run_score
from pipelines.stages.train import TrainingInputError, run_train


def run_all(spark: SparkSession, cfg: Config, store: DeltaStore, flow: Flow, fail_on_drift: bool = False) -> None:
    """Run every stage; a drift alert is logged (and recorded by monitor) and raised only with `fail_on_drift`."""
    land_demo(cfg.catalog.landing, cfg.demo.fraction, cfg.demo.seed, demo_datasets(cfg))
    run_ingest(spark, cfg, store)
    features = run_features(spark, cfg, store, flow)
    try:
        run_train(spark, cfg, store, flow, features_run_id=features.run.run_id)
    except TrainingInputError as e:
        raise BadInput(str(e)) from e
    dates = flow.test_window(cfg, store.read(features.run.table_path, features.run.table_version))
    if dates == []:
        raise BadInput("the test split is empty: nothing to score")
    run_score(spark, cfg, store, flow, dates)
    if dates is None:
        return
    try:
        run_monitor(spark, cfg, store, flow, dates)
    except DriftAlert as e:
        if fail_on_drift:
            raise
        LOG.warning("run-all: %s (reported in gold/drift and MLflow; not failing the chain)", e)
