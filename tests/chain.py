"""A real chain on a small sample, built once per test module that needs a trained, registered model:
land-demo (1% of flights, the profile's data only) -> ingest (its sources) -> features -> train (two Horovod
workers, two short epochs)."""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import SparkSession

from pipelines.core.config import Config, load_config
from pipelines.core.delta import DeltaStore
from pipelines.flows import get_flow
from pipelines.stages.features import run_features
from pipelines.stages.ingest.run import ingest
from pipelines.stages.land_demo import demo_datasets, land_demo
from pipelines.stages.train import run_train

FAST_TRAINING = ["training.epochs=2", "training.batch_size=64", "training.optimizer.warmup_epochs=1",
                 "training.data.shuffle_buffer=500", "training.network.mlp.hidden_units=[16]",
                 "training.baseline.enabled=false", "training.timeout_s=300", "features.stats.enabled=false"]
FLIGHT_SOURCES = ["flights", "weather", "planes", "airlines"]
# Landing files a run wrote itself (land-demo) before ingest lists them need no settling time: saves the default
# 5 s wait per ingest in the end-to-end runs (settling is tested in test_landing and test_ingest_reliability).
LANDED = "ingest.settle_s=0"


def chain_config(workspace: Path, *overrides: str) -> Config:
    """The chain's config; landing files are taken as listed (land-demo wrote them before ingest runs)."""
    return load_config("local", [f"storage.workspace={workspace}", "demo.fraction=0.01", LANDED,
                                 *FAST_TRAINING, *overrides])


def build_chain(spark: SparkSession, workspace: Path) -> Config:
    """Land, ingest, featurize and train into `workspace`; return its Config (model registered as champion)."""
    cfg = chain_config(workspace)
    store = DeltaStore(spark)
    land_demo(cfg.catalog.landing, cfg.demo.fraction, cfg.demo.seed, demo_datasets(cfg))  # the profile's own data
    ingest(spark, cfg, store, "chain")  # all the profile's sources (test_ingest checks no other profile's are there)
    flow = get_flow(cfg)
    run_features(spark, cfg, store, flow)
    run_train(spark, cfg, store, flow)
    return cfg
