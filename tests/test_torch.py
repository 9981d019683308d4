"""PyTorch training (training.framework pytorch): real gloo ranks meeting through the driver's signed store, then a
real two-rank DistributedDataParallel training in the shared Spark session (the pure pieces: test_torch_net.py)."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from pyspark.sql import SparkSession

from pipelines.core.config import REPO_ROOT, Config, load_config
from pipelines.core.delta import DeltaStore
from pipelines.flows import get_flow
from pipelines.stages.train import run_train
from pipelines.training import pyfunc
from pipelines.training.driver import ControlChannel
from pipelines.training.registry import CHAMPION
from pipelines.training.remote.torch_worker import SignedStore
from pipelines.training.spec import WorkerSpec
from tests.chain import LANDED
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


def test_two_torch_ranks_train_register_and_serve(spark: SparkSession, torch_cfg: Callable[..., Config],
                                                  store: DeltaStore, tmp_path: Path) -> None:
    """Two DDP ranks train, log and register a PyTorch model whose pyfunc reproduces the network through Spark;
    `mlflow models serve` of the registered model answers as the pyfunc predicts the same rows."""
    import json
    import urllib.request

    from tests.support.servers import model_server

    cfg = torch_cfg("training.baseline.enabled=true", "training.baseline.kinds=[logreg]",
                    "training.baseline.reg_params=[0.0]", "training.baseline.elastic_net_params=[0.0]")
    result = run_train(spark, cfg, store, get_flow(cfg))

    assert [w.rank for w in result.workers] == [0, 1] and {w.size for w in result.workers} == {2}
    assert len({w.weights_sha256 for w in result.workers}) == 1, "ranks ended with different weights"
    assert result.test["roc_auc"] > 0.7, result.test
    mlflow.set_tracking_uri(cfg.tracking_uri)
    client = MlflowClient()
    run = client.get_run(result.run_id)
    epochs = result.workers[0].epochs_completed
    assert len(client.get_metric_history(result.run_id, "val_auc")) == epochs
    assert run.data.params["framework"] == "pytorch" and run.data.params["backend"] == "torch-ddp"
    uri = f"models:/{cfg.mlflow.registered_model}@{CHAMPION}"
    meta = pyfunc.model_meta(uri)
    assert meta["framework"] == "pytorch" and meta["vector_size"] == len(RAW)
    assert run.data.metrics["pyfunc_check_max_abs_diff"] <= 1e-5  # spark_udf on 256 test rows == the network

    rows = store.read(cfg.catalog.path("features")).filter("split = 'test'").select("features").limit(3).toPandas()
    expected = mlflow.pyfunc.load_model(uri).predict(rows)
    body = json.dumps({"dataframe_split": {"columns": ["features"],
                                           "data": [[list(map(float, v))] for v in rows["features"]]}}).encode()
    with model_server(uri, cfg.tracking_uri, tmp_path) as url:
        req = urllib.request.Request(f"{url}/invocations", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - loopback
            answer = json.loads(resp.read())["predictions"]
    assert [a["prediction"] for a in answer] == expected["prediction"].tolist()
    assert [a["probability"] for a in answer] == pytest.approx(expected["probability"].tolist(), abs=1e-6)
    assert min(expected["probability"]) > 0 and max(expected["probability"]) < 1


def test_search_with_pytorch_trials_and_retrain(spark: SparkSession, torch_cfg: Callable[..., Config]) -> None:
    """`train --search` with training.framework=pytorch: Optuna's trials are PyTorch trainings (nested runs with
    per-epoch validation metrics), the best one retrains and registers a PyTorch model."""
    from jobs import train as train_job

    cfg = torch_cfg("training.search.trials=2", "training.search.epochs=2", "training.search.pruner.enabled=false",
                    "mlflow.registered_model=torch-search")
    argv = ["--search", *[f"--set={o}" for o in (f"storage.workspace={cfg.storage.workspace}", *SMALL, *TORCH,
                                                 "training.search.trials=2", "training.search.epochs=2",
                                                 "training.search.pruner.enabled=false",
                                                 "mlflow.registered_model=torch-search")]]
    assert train_job.main(argv) == 0
    client = MlflowClient(cfg.tracking_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    trials = [r for r in runs if r.data.tags.get("job") == "train.trial"]
    assert len(trials) == 2 and all(t.data.tags["state"] == "COMPLETE" for t in trials)
    for t in trials:
        assert [m.step for m in client.get_metric_history(t.info.run_id, "val_auc")] == [0, 1]
        assert t.data.params["framework"] == "pytorch"
    (retrain,) = [r for r in runs if r.data.tags.get("job") == "train" and r.data.tags.get("search_best_trial_run_id")]
    assert retrain.data.params["framework"] == "pytorch"
    version = client.get_model_version_by_alias("torch-search", CHAMPION)
    assert version.run_id == retrain.info.run_id
    assert pyfunc.model_meta(f"models:/torch-search@{CHAMPION}")["framework"] == "pytorch"


@pytest.mark.slow
def test_digits_cnn_through_spark_submit_with_pytorch(tmp_path: Path) -> None:
    """`spark-submit.sh run-all --set pipeline=digits --set training.framework=pytorch`: the CNN trains on two DDP
    ranks, registers, and the score job scores the PNG bytes through mlflow's spark_udf with the accuracy the
    training's own evaluation measured."""
    ws = tmp_path / "ws"
    sets = [f"--set={s}" for s in ["pipeline=digits", *TORCH, LANDED, "training.epochs=12", "training.timeout_s=400",
                                   "features.stats.enabled=false", "training.baseline.reg_params=[0.01]"]]
    res = subprocess.run([str(REPO_ROOT / "spark-submit.sh"), "run-all", *sets], cwd=REPO_ROOT,
                         env={**os.environ, "PIPELINE_HOME": str(ws)}, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    cfg = load_config("local", [f"storage.workspace={ws}", "pipeline=digits"])
    client = MlflowClient(cfg.tracking_uri)
    champion = client.get_model_version_by_alias("digit-classifier", CHAMPION)
    train = client.get_run(champion.run_id).data
    assert (train.params["framework"], train.params["training.network.kind"]) == ("pytorch", "cnn")
    assert train.params["input_shape"] == "[8, 8, 1]" and train.metrics["identical_weights"] == 1.0
    assert train.metrics["test_accuracy"] > 0.85 and train.metrics["baseline_test_accuracy"] > 0.85
    assert train.metrics["pyfunc_check_max_abs_diff"] <= 1e-5
    exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    score = client.search_runs([exp.experiment_id], "tags.job = 'score'")[0].data.metrics
    assert score["rows_in"] == score["rows_scored"] == 1797
    assert score["accuracy_test"] == pytest.approx(train.metrics["test_accuracy"])  # serving path == evaluation
    mlflow.set_tracking_uri(cfg.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/digit-classifier@{CHAMPION}")  # image bytes in, as served
    pngs = sorted((Path(cfg.catalog.landing) / "digits" / "3").glob("digit_*.png"))[:5]
    out = model.predict(pd.DataFrame({"content": [f.read_bytes() for f in pngs] + [b"not an image"]}))
    assert out["label"].tolist()[:5].count("3") >= 4 and out["prediction"].iloc[-1] == -1
