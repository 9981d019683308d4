"""Network exposure in env local: every TCP socket listening in the driver's process tree (this test process is
the driver of the shared local session: its JVM, Python workers, the Horovod ranks and their gloo devices, the
rendezvous server) binds loopback, during a real two-rank Horovod training and during scoring through
mlflow.pyfunc.spark_udf (pipelines.stages.score). Listeners are sampled with psutil every 0.2 s."""

from __future__ import annotations

import os
from collections.abc import Callable

import psutil
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore
from pipelines.flows import get_flow
from pipelines.stages.score import model_udf, resolve_model
from pipelines.training.remote.task import WORKER_MODULE
from pipelines.training.trainer import run_train
from tests.support.proctree import Listener, TreeWatcher, is_loopback
from tests.test_train import SMALL, make_features_run


def _exposed(listeners: set[Listener]) -> list[Listener]:
    return sorted((s for s in listeners if not is_loopback(s.ip)), key=lambda s: (s.pid, s.port))


@pytest.mark.slow
def test_training_and_scoring_listen_on_loopback_only(spark: SparkSession, make_cfg: Callable[..., Config],
                                                      store: DeltaStore) -> None:
    cfg = make_cfg(*SMALL, "training.epochs=2", "training.max_steps_per_epoch=4")
    make_features_run(spark, cfg, store, rows=1500)

    watcher = TreeWatcher(os.getpid(), interval=0.2).start()
    try:
        result = run_train(spark, cfg, store, get_flow(cfg))
    finally:
        watcher.stop()
    training = set(watcher.listeners)
    ranks = {pid for (pid, _), cmd in watcher.seen.items() if WORKER_MODULE in cmd}
    assert len(ranks) == 2 and result.workers[0].epochs_completed == 2
    # gloo listens only while the ranks connect (a moment a sample may miss); their connections last the run
    assert ranks & watcher.tcp_pids, f"no TCP socket of a Horovod rank (gloo) was seen: {training}"
    assert any(s.pid == os.getpid() for s in training), "the driver's own listeners were not seen"

    watcher = TreeWatcher(os.getpid(), interval=0.2).start()
    try:
        model = resolve_model(cfg)
        rows = (store.read(cfg.catalog.path("features")).select("features").limit(200)
                .select(model_udf(spark, cfg, model)(F.col("features")).alias("p")).collect())
    finally:
        watcher.stop()
    assert len(rows) == 200 and all(r["p"] is not None for r in rows)
    scoring = watcher.listeners
    jvm = {p.pid for p in psutil.Process().children(recursive=True) if p.name() == "java"}
    assert any(s.pid in jvm for s in scoring), f"the JVM's listeners were not seen: {scoring}"

    assert _exposed(training) == [], f"listening beyond loopback during training: {_exposed(training)}"
    assert _exposed(scoring) == [], f"listening beyond loopback during scoring: {_exposed(scoring)}"
