"""Shared fixtures: one SparkSession for the whole run, a fresh workspace and config per test."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from pipelines.core.config import Config, load_config
from pipelines.core.delta import DeltaStore
from pipelines.core.logs import setup_logging
from pipelines.core.session import get_spark
from tests.chain import build_chain

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    """The one SparkSession (local[2]) built by the project's own factory, with the Delta jars (.jars/delta from
    ./bootstrap.sh), so tests can use both storage engines."""
    setup_logging()
    cfg = load_config("local", ["spark.conf.spark.sql.shuffle.partitions=4",
                                "spark.conf.spark.ui.enabled=false",  # would hold port 4040 all run long
                                "spark.conf.spark.eventLog.enabled=false"])  # its workspace is the checkout's
    session = get_spark(cfg, "tests")
    yield session
    session.stop()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "workspace"
    ws.mkdir()
    return ws


@pytest.fixture
def make_cfg(workspace: Path) -> Callable[..., Config]:
    """make_cfg("demo.fraction=0.01", ...) -> Config whose workspace is this test's temporary folder. Landing files
    are taken as listed (ingest.settle_s=0: the tests write them before ingest runs) unless a test sets it."""

    def make(*overrides: str, env: str = "local") -> Config:
        return load_config(env, [f"storage.workspace={workspace}", "ingest.settle_s=0", *overrides])

    return make


@pytest.fixture
def store(spark: SparkSession) -> DeltaStore:
    """A store with the configured default engine (auto: delta-spark, since the session has the jars)."""
    return DeltaStore(spark, load_config("local", []).storage.engine)


@pytest.fixture(scope="session")
def chain(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Config:
    """One real chain for every test that needs a registered champion (1% of flights, two Horovod workers):
    built once per run. Tests may add predictions, drift rows and runs to it, never remove what others read."""
    return build_chain(spark, tmp_path_factory.mktemp("chain") / "ws")
