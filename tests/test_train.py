"""Train job: real Spark barrier stage, real Horovod over gloo, real Petastorm, real MLflow (sqlite) on a small
synthetic feature table written and logged the way the features job does (table + fitted PipelineModel)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from pyspark.ml import Pipeline
from pyspark.ml.feature import StandardScaler, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from jobs import train as train_job
from pipelines.core.config import Config, ConfigError
from pipelines.core.delta import DeltaStore
from pipelines.core.recorder import FEATURES_JOB, PREPROCESSING_ARTIFACT, FeaturesRecord, Recorder
from pipelines.flows import get_flow
from pipelines.stages.features import save_preprocessing
from pipelines.stages.train import run_train
from pipelines.training import Launch, checkpoint_root, checkpoints, fit, load_training_data, pyfunc, resolve_source
from pipelines.training.data import ParquetCache, arrow_to_numpy
from pipelines.training.driver import TrainingFailed, TrainingTimeout, steps_per_epoch
from pipelines.training.heads import get_head
from pipelines.training.registry import CHALLENGER, CHAMPION, register_and_promote
from pipelines.training.remote.task import WORKER_MODULE
from pipelines.training.spec import WorkerResult, assign_ranks

RAW = [f"x{i}" for i in range(6)]
SMALL = ["training.epochs=4", "training.batch_size=64", "training.optimizer.warmup_epochs=1",
         "training.data.shuffle_buffer=500", "training.early_stopping.patience=10",
         "training.network.mlp.hidden_units=[16, 8]", "training.optimizer.learning_rate=0.001",
         "training.baseline.enabled=false", "training.timeout_s=240"]


def make_features_run(spark: SparkSession, cfg: Config, store: DeltaStore, rows: int = 3000, seed: int = 3) -> str:
    """A silver feature table at cfg.catalog.path("features") and a features run recorded the way the features job
    records one (pipelines.core.recorder: tags, `preprocessing` artifact); its run id."""
    rng = np.random.default_rng(seed)
    month = rng.integers(1, 13, rows)
    x = rng.normal(size=(rows, len(RAW)))
    logit = 1.8 * x[:, 0] - 1.2 * x[:, 1] + 0.8 * x[:, 2] * x[:, 3] - 1.6
    label = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(float)
    label[rng.random(rows) < 0.02] = np.nan  # no outcome: excluded from training
    pdf = pd.DataFrame({"year": 2013, "month": month, "day": rng.integers(1, 29, rows),
                        "carrier": rng.choice(["AA", "UA", "B6"], rows), "flight": np.arange(rows),
                        "origin": rng.choice(["JFK", "EWR"], rows), "sched_dep_time": rng.integers(500, 2300, rows),
                        "label": pd.array(label, dtype="Int32"), **{c: x[:, i] for i, c in enumerate(RAW)}})
    df = (spark.createDataFrame(pdf)
          .withColumn("flight_date", F.make_date("year", "month", "day"))
          .withColumn("split", F.when(F.col("month") <= 9, "train").when(F.col("month") <= 11, "validation")
                      .otherwise("test")))
    prep = Pipeline(stages=[VectorAssembler(inputCols=RAW, outputCol="assembled"),
                            StandardScaler(inputCol="assembled", outputCol="features_vector", withMean=True)])
    model = prep.fit(df.filter("split = 'train'"))
    key = ["year", "month", "day", "carrier", "flight", "origin", "sched_dep_time"]
    table = model.transform(df).select(*key, "flight_date", "split", F.col("label").cast("int"),
                                       vector_to_array("features_vector", "float32").alias("features"), *RAW)
    path = cfg.catalog.path("features")
    version = store.write(table, path, "overwrite")
    with Recorder.start(cfg, FEATURES_JOB) as rec:
        model_path = save_preprocessing(model, cfg, rec.run_id, rec)
        rec.features_run(FeaturesRecord(rec.run_id, path, version, model_path,
                                        f"runs:/{rec.run_id}/{PREPROCESSING_ARTIFACT}", len(RAW)),
                         cfg.features.output_table)
        return rec.run_id


@pytest.fixture
def features_cfg(spark: SparkSession, make_cfg: Callable[..., Config], store: DeltaStore) -> Callable[..., Config]:
    """make(*overrides) -> Config of a workspace that holds a features run (made once per test)."""
    made: dict[str, str] = {}

    def make(*overrides: str) -> Config:
        cfg = make_cfg(*SMALL, *overrides)
        if "run" not in made:
            made["run"] = make_features_run(spark, cfg, store)
        return cfg

    return make


# ---- pure pieces -----------------------------------------------------------------------------------------------
def test_petastorm_batches_shuffle_whole_blocks_without_losing_rows(spark: SparkSession, tmp_path: Path) -> None:
    """One pass over a Parquet cache: every row exactly once, full batches but the last, rows permuted within
    blocks of the shuffle buffer (reproducibly from the seed), features still matching their own row."""
    rows, batch = 1000, 64
    df = spark.range(rows).select(F.col("id").cast("double").alias("label"),
                                  F.array(F.col("id").cast("double"), (F.col("id") * 2).cast("double"))
                                  .alias("features"))
    cache = ParquetCache.materialize(df, f"file://{tmp_path}", 3)

    def one_pass(seed: int, shuffle: int | None) -> list[np.ndarray]:
        with cache.make_tf_dataset(batch_size=batch, num_epochs=1, workers_count=1, seed=seed,
                                   shuffle_row_groups=False, shuffling_queue_capacity=shuffle) as ds:
            assert ds.options().autotune.enabled is False  # its thread held up the end of every fit (data.PREFETCH)
            out = []
            for b in ds:
                assert np.array_equal(b.features.numpy()[:, 1], 2 * b.label.numpy())  # rows stay whole
                out.append(b.label.numpy().astype(int))
            return out

    plain, shuffled, again = one_pass(1, None), one_pass(1, 300), one_pass(1, 300)
    assert [len(b) for b in shuffled] == [batch] * (rows // batch) + [rows % batch]
    got = np.concatenate(shuffled)
    assert sorted(got.tolist()) == list(range(rows))  # nothing lost, nothing repeated
    order = np.concatenate(plain)
    assert sorted(order.tolist()) == list(range(rows)) and not np.array_equal(got, order)
    for start in range(0, rows, 300):  # each block of 300 rows is a permutation of the same block unshuffled
        assert sorted(got[start:start + 300].tolist()) == sorted(order[start:start + 300].tolist())
        assert not np.array_equal(got[start:start + 300], order[start:start + 300])
    assert np.array_equal(got, np.concatenate(again))  # same seed, same order
    assert not np.array_equal(got, np.concatenate(one_pass(2, 300)))
    cache.delete()


def test_list_columns_become_matrices_as_petastorm_makes_them() -> None:
    """The vectorized Arrow -> numpy conversion gives what Petastorm's own gives (values, dtypes, shapes) for
    fixed-length lists over several chunks and slices, images with a 2-D shape, and strings; ragged lists and
    lists with nulls go to Petastorm's conversion, which reports the ragged ones."""
    import pyarrow as pa
    from petastorm.arrow_reader_worker import convert_arrow_table_to_numpy_dict as petastorm_convert
    from petastorm.unischema import Unischema, UnischemaField

    schema = Unischema("s", [UnischemaField("features", np.float32, (None,), None, False),
                             UnischemaField("image", np.uint8, (2, 3), None, False),
                             UnischemaField("word", np.str_, (), None, False),
                             UnischemaField("ragged", np.float64, (None,), None, False)])
    chunks = [pa.table({"features": pa.array([[i, i + 0.5, -i] for i in range(a, b)], pa.list_(pa.float32())),
                        "image": pa.array([[i % 256] * 6 for i in range(a, b)], pa.list_(pa.uint8())),
                        "word": pa.array([f"w{i}" for i in range(a, b)])}) for a, b in ((0, 7), (7, 20))]
    table = pa.concat_tables(chunks)
    assert table.column("features").num_chunks == 2
    for t in (table, table.slice(5, 9), chunks[1].slice(3)):
        got, want = arrow_to_numpy(t, schema, petastorm_convert), petastorm_convert(t, schema)
        assert list(got) == list(want) == ["features", "image", "word"]
        for name in want:
            assert got[name].dtype == want[name].dtype and np.array_equal(got[name], want[name])
    given: list[str] = []

    def recording(t: pa.Table, s: Unischema) -> dict[str, np.ndarray]:
        given.extend(t.column_names)
        return petastorm_convert(t, s)

    got = arrow_to_numpy(table.slice(5, 9), schema, recording)
    assert given == ["word"]  # the list columns never reach Petastorm's per-row conversion
    assert got["features"][0].tolist() == [5.0, 5.5, -5.0] and got["image"].shape == (9, 2, 3)
    with_null = pa.table({"ragged": pa.array([[1.0, None], [2.0, 3.0]], pa.list_(pa.float64()))})
    assert np.array_equal(arrow_to_numpy(with_null, schema, petastorm_convert)["ragged"],
                          np.array([[1.0, np.nan], [2.0, 3.0]]), equal_nan=True)
    ragged = pa.table({"ragged": pa.array([[1.0, 2.0], [3.0]], pa.list_(pa.float64()))})
    with pytest.raises(RuntimeError, match="ragged"):
        arrow_to_numpy(ragged, schema, petastorm_convert)


def test_steps_are_fixed_per_rank_and_capped() -> None:
    assert steps_per_epoch(10_000, 64, 2) == 78
    assert steps_per_epoch(100, 64, 2) == 1
    assert steps_per_epoch(10_000, 64, 2, cap=5) == 5


def test_rank_assignment_groups_hosts_and_follows_partitions() -> None:
    slots = assign_ranks(["b", "a", "b", "a"])
    assert [s.rank for s in slots] == [0, 2, 1, 3]  # host b holds ranks 0-1, host a ranks 2-3
    assert [(s.local_rank, s.local_size, s.cross_size, s.size) for s in slots[:2]] == [(0, 2, 2, 4), (0, 2, 2, 4)]


def test_training_config_validates(make_cfg: Callable[..., Config]) -> None:
    cfg = make_cfg()
    assert cfg.training.num_workers == 2 and cfg.training.backend == "horovod"
    with pytest.raises(ConfigError, match="training.fault"):
        make_cfg("training.fault.fail_rank=5")
    with pytest.raises(ConfigError, match="training.backend"):
        make_cfg("training.backend=mpi")


# ---- end to end ------------------------------------------------------------------------------------------------
def test_two_workers_train_log_register(spark: SparkSession, features_cfg: Callable[..., Config],
                                       store: DeltaStore) -> None:
    cfg = features_cfg("training.baseline.enabled=true", "training.baseline.kinds=[logreg]",
                       "training.baseline.reg_params=[0.0]", "training.baseline.elastic_net_params=[0.0]")
    result = run_train(spark, cfg, store, get_flow(cfg))

    assert [w.rank for w in result.workers] == [0, 1] and {w.size for w in result.workers} == {2}
    assert len({w.weights_sha256 for w in result.workers}) == 1, "ranks ended with different weights"
    assert result.workers[0].initial_epoch == 0 and result.workers[0].attempt == 0
    assert result.test["roc_auc"] > 0.7, result.test
    assert result.baseline_test is not None and result.baseline_test["roc_auc"] > 0.7

    client = MlflowClient()
    run = client.get_run(result.run_id)
    epochs = result.workers[0].epochs_completed
    assert epochs >= 1 and len(client.get_metric_history(result.run_id, "val_auc")) == epochs
    assert [m.step for m in client.get_metric_history(result.run_id, "loss")] == list(range(epochs))
    assert run.data.params["num_workers"] == "2" and run.data.tags["git_commit"]
    assert run.data.params["feature_table_version"] == "0"
    assert {"test_roc_auc", "test_pr_auc", "test_accuracy", "test_log_loss", "baseline_test_roc_auc"} <= set(
        run.data.metrics)
    plots = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert {"plots/confusion_matrix_test.png", "plots/roc_curve_test.png"} <= plots
    nested = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'", output_format="list")
    assert [r.data.tags["job"] for r in nested] == ["train.baseline"]

    name = cfg.mlflow.registered_model
    assert (result.version, result.alias) == ("1", CHAMPION)
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "1"
    meta = pyfunc.model_meta(f"models:/{name}@{CHAMPION}")
    assert meta["threshold"] == pytest.approx(result.threshold) and meta["vector_size"] == len(RAW)
    assert pyfunc.load_preprocessing(f"models:/{name}@{CHAMPION}").stages[-1].getOutputCol() == "features_vector"
    assert checkpoints.list_epochs(result.checkpoint_dir)[-1] == epochs - 1


def test_champion_moves_only_to_a_better_version(make_cfg: Callable[..., Config], tmp_path: Path) -> None:
    from pipelines.core.tracking import configure_mlflow

    cfg = make_cfg()
    configure_mlflow(cfg)
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="m", python_model=pyfunc.serving_code(str(tmp_path)), pip_requirements=[],
                                       artifacts={"keras_model": str(tmp_path), "meta": str(tmp_path)})
    first = register_and_promote("promo", info.model_uri, "test_roc_auc", 0.70)
    worse = register_and_promote("promo", info.model_uri, "test_roc_auc", 0.65)
    better = register_and_promote("promo", info.model_uri, "test_roc_auc", 0.75)
    assert (first.alias, worse.alias, better.alias) == (CHAMPION, CHALLENGER, CHAMPION)
    assert (worse.previous_champion, better.previous_champion) == ("1", "1")
    client = MlflowClient()
    assert str(client.get_model_version_by_alias("promo", CHAMPION).version) == "3"
    assert str(client.get_model_version_by_alias("promo", CHALLENGER).version) == "2"


def test_champion_moves_to_a_lower_error_when_lower_is_better(make_cfg: Callable[..., Config],
                                                              tmp_path: Path) -> None:
    from pipelines.core.tracking import configure_mlflow

    configure_mlflow(make_cfg())
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="m", python_model=pyfunc.serving_code(str(tmp_path)), pip_requirements=[],
                                       artifacts={"keras_model": str(tmp_path), "meta": str(tmp_path)})
    first = register_and_promote("err", info.model_uri, "test_rmse", 10.0, lower_is_better=True)
    worse = register_and_promote("err", info.model_uri, "test_rmse", 12.0, lower_is_better=True)
    better = register_and_promote("err", info.model_uri, "test_rmse", 8.0, lower_is_better=True)
    assert (first.alias, worse.alias, better.alias) == (CHAMPION, CHALLENGER, CHAMPION)
    assert better.previous_value == 10.0


def fit_only(spark: SparkSession, cfg: Config, store: DeltaStore, name: str) -> list[WorkerResult]:
    """Just the distributed fit of the job (data, Petastorm, launcher), checkpoints in <root>/<name>."""
    tc = cfg.training
    source = resolve_source(cfg, None)
    head = get_head("binary")
    data = load_training_data(store, cfg, source, head)
    counts = data.counts
    try:
        spe = steps_per_epoch(counts["train"]["rows"], tc.batch_size, tc.num_workers, tc.max_steps_per_epoch)
        vsteps = steps_per_epoch(counts["validation"]["rows"], tc.batch_size, tc.num_workers, tc.max_steps_per_epoch)
        launch = Launch(source.vector_size, spe, vsteps, f"{checkpoint_root(cfg)}/{name}",
                        class_weight=head.class_weights(data.per_class, 2))
        return fit(spark, cfg, data.rows, launch)
    finally:
        data.rows.unpersist()


def test_spark_retry_resumes_from_checkpoint(spark: SparkSession, features_cfg: Callable[..., Config],
                                             store: DeltaStore) -> None:
    cfg = features_cfg("training.fault.fail_rank=1", "training.fault.fail_epoch=2")
    results = fit_only(spark, cfg, store, "retry")
    r0 = results[0]
    assert [r.attempt for r in results] == [1, 1], "the barrier stage was not retried"
    assert [r.initial_epoch for r in results] == [2, 2], "the retry did not continue from the epoch-1 checkpoint"
    assert [h["epoch"] for h in r0.history] == [0, 1, 2, 3] and r0.epochs_completed == 4
    assert len({r.weights_sha256 for r in results}) == 1
    assert checkpoints.list_epochs(f"{checkpoint_root(cfg)}/retry") == [1, 2, 3]  # keep_checkpoints=3


def test_dead_rank_fails_fast_with_its_error_then_resume(spark: SparkSession, features_cfg: Callable[..., Config],
                                                         store: DeltaStore) -> None:
    dying = ["training.fault.fail_rank=1", "training.fault.fail_epoch=2", "training.fault.mode=exit",
             "training.fault.only_first_attempt=false", "training.max_attempts=1"]
    cfg = features_cfg(*dying)
    started = time.monotonic()
    with pytest.raises(TrainingFailed) as err:
        fit_only(spark, cfg, store, "died")
    assert time.monotonic() - started < cfg.training.timeout_s
    assert err.value.rank == 1 and "rank 1" in str(err.value) and "exit code 17" in str(err.value)
    assert checkpoints.list_epochs(f"{checkpoint_root(cfg)}/died") == [0, 1]

    argv = ["--resume", "died", *[f"--set={o}" for o in (*SMALL, f"storage.workspace={cfg.workspace}")]]
    assert train_job.main(argv) == 0
    run = mlflow.search_runs(filter_string="tags.job = 'train' and attributes.status = 'FINISHED'",
                             output_format="list")[0]
    assert run.data.tags["resumed_from"].endswith("/died")
    assert run.data.metrics["initial_epoch"] == 2 and run.data.metrics["epochs_completed"] == 4


def test_timeout_cancels_the_job_group_and_its_processes(spark: SparkSession, features_cfg: Callable[..., Config],
                                                         store: DeltaStore) -> None:
    import psutil

    cfg = features_cfg("training.epochs=10000", "training.early_stopping.patience=10000",  # only the timeout ends it
                       "training.timeout_s=20", "training.max_attempts=1")
    since = time.time()
    started = time.monotonic()
    with pytest.raises(TrainingTimeout, match="timeout_s=20"):
        fit_only(spark, cfg, store, "slow")
    assert time.monotonic() - started < 50
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _training_processes(psutil, since):
        time.sleep(0.5)
    assert _training_processes(psutil, since) == [], "training processes outlived their cancelled tasks"


def _training_processes(psutil: Any, since: float) -> list[int]:
    """Training processes (python -m pipelines.training.remote.worker) started after `since`, orphans included."""
    return [p.info["pid"] for p in psutil.process_iter(["pid", "cmdline", "create_time"])
            if WORKER_MODULE in (p.info["cmdline"] or []) and p.info["create_time"] >= since]
