"""A real chain on a small sample, built once per test module that needs a trained, registered model:
land-demo (1% of flights) -> ingest -> features -> train (two Horovod workers, two short epochs)."""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import SparkSession

from pipelines.core.config import Config, load_config
from pipelines.core.delta import DeltaStore
from pipelines.demo import land_demo
from pipelines.features import run_features
from pipelines.ingest import ingest
from pipelines.training.job import run_train

FAST_TRAINING = ["training.epochs=2", "training.batch_size=64", "training.optimizer.warmup_epochs=1",
                 "training.data.shuffle_buffer=500", "training.network.mlp.hidden_units=[16]",
                 "training.baseline.enabled=false", "training.timeout_s=300", "features.stats.enabled=false"]
FLIGHT_SOURCES = ["flights", "weather", "planes", "airlines"]


def chain_config(workspace: Path, *overrides: str) -> Config:
    return load_config("local", [f"storage.workspace={workspace}", "demo.fraction=0.01", *FAST_TRAINING,
                                 *overrides])


def build_chain(spark: SparkSession, workspace: Path) -> Config:
    """Land, ingest, featurize and train into `workspace`; return its Config (model registered as champion)."""
    cfg = chain_config(workspace)
    store = DeltaStore(spark)
    land_demo(cfg.catalog.landing, cfg.demo.fraction, cfg.demo.seed)
    ingest(spark, cfg, store, "chain", FLIGHT_SOURCES)
    run_features(spark, cfg, store)
    run_train(spark, cfg, store)
    return cfg
