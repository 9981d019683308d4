"""Shared fixtures: one SparkSession for the whole run, a fresh workspace and config per test.

Heavy things (pyspark, the Delta store, the chain's trainer with Horovod and MLflow) are imported inside the
fixtures that need them, so the fast tier (`./run-tests.sh --fast`, tests marked `fast`) starts no JVM and imports
no Horovod: collecting a pure test costs only its own imports."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pipelines.core.config import Config, load_config
from tests.support.workspaces import with_mlflow_db

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from pipelines.core.delta import DeltaStore

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    """The one SparkSession (local[2]) built by the project's own factory, with the Delta jars (.jars/delta from
    ./bootstrap.sh), so tests can use both storage engines."""
    from pipelines.core.logs import setup_logging
    from pipelines.core.session import get_spark

    setup_logging()
    cfg = load_config("local", ["spark.conf.spark.sql.shuffle.partitions=4",
                                "spark.conf.spark.ui.enabled=false",  # would hold port 4040 all run long
                                "spark.conf.spark.eventLog.enabled=false"])  # its workspace is the checkout's
    session = get_spark(cfg, "tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow tracking database with all of MLflow's schema migrations applied, made once per run. A fresh
    database costs a workspace 3-5 s of migrations (MLflow's own work, not the project's); the end-to-end runs,
    the module fixtures' workspaces and tests/test_concurrency.py still create theirs for real."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    SqlAlchemyStore(f"sqlite:///{path}", str(path.parent / "mlartifacts")).engine.dispose()
    return path


@pytest.fixture
def workspace(tmp_path: Path, mlflow_db: Path) -> Path:
    return with_mlflow_db(tmp_path / "workspace", mlflow_db)


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
    from pipelines.core.delta import DeltaStore

    return DeltaStore(spark, load_config("local", []).storage.engine)


@pytest.fixture(scope="session")
def chain(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory, mlflow_db: Path) -> Config:
    """One real chain for every test that needs a registered champion (1% of flights, two Horovod workers):
    built once per run. Tests may add predictions, drift rows and runs to it, never remove what others read."""
    from tests.chain import build_chain

    return build_chain(spark, with_mlflow_db(tmp_path_factory.mktemp("chain") / "ws", mlflow_db))


# ---- the fast tier ---------------------------------------------------------------------------------------------------
FAST_MARK = "pytest.mark.fast"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--fast", action="store_true",
                     help="only the fast tier: tests marked `fast` (no JVM, cluster or training process), in files "
                          "that mark some; Horovod imports and JVM starts fail (tests/support/fastguard.py)")


def pytest_configure(config: pytest.Config) -> None:
    # Registered here, not in pyproject.toml: bootstrap.sh's stamp hashes pyproject.toml, so an edit there would
    # reinstall the environment.
    config.addinivalue_line("markers", "fast: the fast tier (`./run-tests.sh --fast`): no JVM, cluster, training "
                                       "process or Horovod")
    if config.getoption("fast"):
        from tests.support.fastguard import install

        install()
        expr = config.option.markexpr
        config.option.markexpr = f"fast and ({expr})" if expr else "fast"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Under --fast, test files that mark nothing fast are not even imported (their imports are the heavy part)."""
    if config.getoption("fast") and collection_path.is_file() and collection_path.name.startswith("test_"):
        return FAST_MARK not in collection_path.read_text(encoding="utf-8") or None
    return None
