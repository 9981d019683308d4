"""PyTorch training (training.framework pytorch): real gloo ranks meeting through the driver's signed store, then a
real two-rank DistributedDataParallel training in the shared Spark session (the pure pieces: test_torch_net.py)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from dataclasses import replace

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from pyspark.sql import SparkSession

from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore
from pipelines.flows import get_flow
from pipelines.stages.train import run_train
from pipelines.training import pyfunc
from pipelines.training.driver import ControlChannel
from pipelines.training.registry import CHAMPION
from pipelines.training.remote.torch_worker import SignedStore
from pipelines.training.spec import WorkerSpec
from tests.test_train import RAW, SMALL, make_features_run

TORCH = ("training.framework=pytorch",)
@pytest.fixture
def store_channel() -> Iterator[tuple[ControlChannel, WorkerSpec]]:
    chan = ControlChannel(2, 2, 3, False, lambda reason: None)
    port = chan.start()
    spec = WorkerSpec(backend="torch-ddp", training={}, vector_size=1, steps_per_epoch=1, validation_steps=1,
                      class_weight=None, train_data=None, val_data=None, checkpoint_dir="", resume_from=None,
                      control_host="127.0.0.1", control_port=port, secret=chan.secret)
    yield chan, spec
    chan.stop()


def _rank(spec: WorkerSpec, rank: int, out: multiprocessing.Queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", store=SignedStore(spec, "torch-ddp-0", 60), rank=rank, world_size=2)
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    out.put((rank, float(t.item())))
    dist.destroy_process_group()


def test_process_group_meets_through_the_signed_store(store_channel: tuple[ControlChannel, WorkerSpec]) -> None:
    """Two real gloo ranks rendezvous through the driver's control server; a store with another secret is
    refused (403) and reads nothing."""
    chan, spec = store_channel
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(spec, r, out)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert sorted(out.get(timeout=5) for _ in range(2)) == [(0, 3.0), (1, 3.0)]
    stranger = SignedStore(replace(spec, secret=b"x" * 32), "torch-ddp-0", 1)
    with pytest.raises(Exception, match="not signed by the driver|403"):
        stranger.get("0")


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
