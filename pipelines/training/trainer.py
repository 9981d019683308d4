"""train: silver feature table -> Keras model trained by N Horovod (or tf-mwms) workers in one barrier stage ->
evaluated, logged as an MLflow pyfunc, checked through Spark, compared with MLlib baselines and registered.

One trainer for every flow and task. What differs by task (binary, multiclass, regression) lives in its head
(heads.py); what differs by flow comes from the `flow` argument (its head, the pyfunc's input rows, extra serving
meta) and the features run's record (table version, classes, image shape), never from the flow's config section.
The steps, all in one MLflow run:

  resolve the features run -> load data -> params/tags -> fit (barrier launcher) -> evaluate (driver) ->
  log pyfunc -> parity check through mlflow spark_udf -> baselines (nested runs) and the comparison report
  (report/model_comparison.md) -> plots -> register/promote. `train_with` is that run on resolved inputs, which
  the hyperparameter search (search.py) uses to retrain its best trial.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.core.config import Config, TrainingConf
from pipelines.core.delta import DeltaStore
from pipelines.core.files import to_uri
from pipelines.core.logs import LOG, stage
from pipelines.core.recorder import FeaturesRecord, features_record, flat, latest_features_record, log_config
from pipelines.core.tracking import configure_mlflow, git_commit, job_run
from pipelines.training import checkpoints, pyfunc
from pipelines.training.data import ParquetCache
from pipelines.training.driver import make_launcher, steps_per_epoch
from pipelines.training.evaluate import features_matrix, plot_history
from pipelines.training.heads import Head, TrainingInputError, get_head
from pipelines.training.registry import register_and_promote
from pipelines.training.spec import WorkerResult, WorkerSpec

__all__ = ["TrainResult", "TrainingInputError", "run_train"]

JOB = "train"
SPLITS = ("train", "validation", "test")
EVAL_ROWS = 500_000  # validation/test rows scored on the driver for threshold and metrics (seeded sample above)
PARITY_ROWS = 256  # test rows the logged pyfunc must reproduce through Spark


@dataclass
class TrainResult:
    """What the job produced; `workers` are the per-rank results (weights dropped)."""

    run_id: str
    model_uri: str
    registered_model: str
    version: str
    alias: str
    threshold: float  # binary: chosen on validation; NaN for the other heads
    test: dict[str, float]
    validation: dict[str, float]
    baseline_test: dict[str, float] | None
    features_run_id: str
    table_version: int
    checkpoint_dir: str
    workers: list[WorkerResult] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    head: str = "binary"
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)  # kind -> test metrics, best first


@dataclass
class TrainingData:
    """The labeled rows (split, label, features) of the pinned table version, persisted, and their counts."""

    rows: DataFrame
    counts: dict[str, dict[str, Any]]  # split -> rows (+ positives for binary, label mean / std for regression)
    per_class: dict[int, int]  # train rows per class id (classifying heads)

    @property
    def label_scale(self) -> tuple[float, float] | None:
        """(mean, std) of the train labels, for a regression head's output layer."""
        train = self.counts["train"]
        return (train["label_mean"], train["label_std"]) if "label_mean" in train else None


@dataclass(frozen=True)
class Task:
    """The resolved inputs of one training: features record, head, classes, image shape, resume folder."""

    record: FeaturesRecord
    head: Head
    classes: list[str] | None
    input_shape: tuple[int, ...] | None
    resume_dir: str | None

    @property
    def num_classes(self) -> int:
        if self.head.name == "multiclass":
            return len(self.classes or [])
        return 2 if self.head.classified else 1

    @property
    def image(self) -> bool:
        return self.input_shape is not None


def checkpoint_root(cfg: Config) -> str:
    return (cfg.training.checkpoint_dir or f"{cfg.workspace.rstrip('/')}/checkpoints").rstrip("/")


# ---- the job --------------------------------------------------------------------------------------------------
def run_train(spark: SparkSession, cfg: Config, store: DeltaStore, flow: Any, features_run_id: str | None = None,
              resume: str | None = None) -> TrainResult:
    """The train job: features run -> data -> distributed training -> evaluation -> pyfunc -> baseline -> registry."""
    task = resolve_task(cfg, flow, features_run_id, resume)
    with stage("train.data") as s:
        data = load_training_data(store, cfg, task.record, task.head)
        s.add(table_version=task.record.table_version, vector_size=task.record.vector_size, head=task.head.name,
              **({"classes": len(task.classes)} if task.classes else {}),
              **{f"{k}_rows": v["rows"] for k, v in data.counts.items()})
    try:
        return train_with(spark, cfg, store, flow, task, data)
    finally:
        data.rows.unpersist()


def train_with(spark: SparkSession, cfg: Config, store: DeltaStore, flow: Any, task: Task, data: TrainingData,
               nested: bool = False, tags: dict[str, str] | None = None) -> TrainResult:
    """One train run on resolved inputs (the job's, or the search's retrain of its best trial, `nested` under the
    search run and carrying its `tags`)."""
    with job_run(cfg, JOB, nested=nested) as active:
        if tags:
            mlflow.set_tags(tags)
        return _train_in_run(spark, cfg, store, flow, task, data, active.info.run_id)


def resolve_source(cfg: Config, features_run_id: str | None) -> FeaturesRecord:
    """The features run to train on: the given id, training.data.features_run_id, or the latest one."""
    run_id = features_run_id or cfg.training.data.features_run_id
    try:
        return features_record(cfg, run_id) if run_id else latest_features_record(cfg)
    except LookupError as e:
        raise TrainingInputError(str(e)) from e


def resolve_task(cfg: Config, flow: Any, features_run_id: str | None, resume: str | None) -> Task:
    """Features record, the flow's head (which must be the one the features run was built for), classes and
    image shape, and the checkpoint folder to resume from."""
    record = resolve_source(cfg, features_run_id)
    head = get_head(flow.head(cfg))
    if record.head != head.name:
        raise TrainingInputError(f"features run {record.run_id} was built for a {record.head} model, the flow trains "
                                 f"a {head.name} model: run the features job again")
    if head.name == "multiclass" and not record.classes:
        raise TrainingInputError(f"features run {record.run_id} records no classes")
    kind = cfg.training.network.kind
    if kind == "cnn" and not record.input_shape:
        raise TrainingInputError("training.network.kind cnn needs image features; this features run has none")
    shape = tuple(record.input_shape) if record.input_shape and kind == "cnn" else None
    classes = list(record.classes) if record.classes and head.name == "multiclass" else None
    resume_dir = resolve_resume(cfg, resume) if resume else None
    return Task(record, head, classes, shape, resume_dir)


def resolve_resume(cfg: Config, resume: str) -> str:
    """Checkpoint folder to continue from: a train run's id, or 'latest' = newest train run with checkpoints."""
    root = checkpoint_root(cfg)
    if resume != "latest":
        if not checkpoints.list_epochs(f"{root}/{resume}"):
            raise TrainingInputError(f"--resume {resume}: no checkpoints in {root}/{resume}")
        return f"{root}/{resume}"
    exp = configure_mlflow(cfg)
    runs = mlflow.search_runs(experiment_ids=[exp], output_format="list", order_by=["attributes.start_time DESC"],
                              filter_string=f"tags.job = '{JOB}'", max_results=50)
    for r in runs:
        if checkpoints.list_epochs(f"{root}/{r.info.run_id}"):
            return f"{root}/{r.info.run_id}"
    raise TrainingInputError(f"--resume: no earlier train run has checkpoints under {root}")


def load_training_data(store: DeltaStore, cfg: Config, record: FeaturesRecord, head: Head) -> TrainingData:
    """Labeled rows (split, label as the head's type, features) of the pinned table version, persisted, with
    per-split counts and (classifying heads) per-class train counts."""
    table = store.read(record.table_path, record.table_version)
    where = f"{record.table_path} v{record.table_version}"
    missing = {"split", "label", "features"} - set(table.columns)
    if missing:
        raise TrainingInputError(f"feature table {where} lacks {sorted(missing)}")
    data = (table.filter(F.col("label").isNotNull() & F.col("split").isin(*SPLITS))
            .select("split", F.col("label").cast(head.label_type).alias("label"),
                    F.col("features").cast("array<float>")))
    fraction = cfg.training.data.sample_fraction
    if fraction < 1:
        data = data.sample(fraction=fraction, seed=cfg.training.seed)
    data = data.persist(StorageLevel.MEMORY_AND_DISK)
    extra = {"binary": [F.sum("label").alias("positives")],
             "regression": [F.avg("label").alias("label_mean"), F.stddev_pop("label").alias("label_std")]
             }.get(head.name, [])
    rows = (data.groupBy("split")
            .agg(F.count("*").alias("rows"), F.min(F.size("features")).alias("min_len"),
                 F.max(F.size("features")).alias("max_len"), *extra)
            .collect())
    counts = {r["split"]: {"rows": int(r["rows"]), "min_len": int(r["min_len"]), "max_len": int(r["max_len"]),
                           **{c: (int(r[c] or 0) if c == "positives" else float(r[c] or 0.0))
                              for c in r.asDict() if c in ("positives", "label_mean", "label_std")}}
              for r in rows}
    empty = [s for s in SPLITS if counts.get(s, {}).get("rows", 0) == 0]
    if empty:
        data.unpersist()
        raise TrainingInputError(f"feature table {where}: no labeled rows in split(s) {empty}")
    lengths = {c[k] for c in counts.values() for k in ("min_len", "max_len")}
    if lengths != {record.vector_size}:
        data.unpersist()
        raise TrainingInputError(f"features arrays have lengths {sorted(lengths)}, the features run says "
                                 f"{record.vector_size}")
    per_class: dict[int, int] = {}
    if head.classified:
        per_class = {int(r["label"]): int(r["count"])
                     for r in data.filter(F.col("split") == "train").groupBy("label").count().collect()}
    return TrainingData(data, counts, per_class)


def class_weights(cfg: Config, task: Task, data: TrainingData) -> dict[int, float] | None:
    """The head's class weights when training.class_weights is on (after checking the train split's classes)."""
    if not task.head.classified:
        return None
    task.head.check_classes(data.per_class, task.num_classes)
    return task.head.class_weights(data.per_class, task.num_classes) if cfg.training.class_weights else None


def _train_in_run(spark: SparkSession, cfg: Config, store: DeltaStore, flow: Any, task: Task, data: TrainingData,
                  run_id: str) -> TrainResult:
    """The job's steps inside its MLflow run."""
    tc, record, head = cfg.training, task.record, task.head
    weights = class_weights(cfg, task, data)
    n = tc.num_workers
    spe = steps_per_epoch(data.counts["train"]["rows"], tc.batch_size, n, tc.max_steps_per_epoch)
    vsteps = steps_per_epoch(data.counts["validation"]["rows"], tc.batch_size, n, tc.max_steps_per_epoch)
    ckpt_dir = f"{checkpoint_root(cfg)}/{run_id}"
    _log_inputs(cfg, task, data, weights, spe, vsteps, ckpt_dir)

    with stage("train.fit") as s:
        results = fit(spark, cfg, data.rows, record.vector_size, weights, spe, vsteps, ckpt_dir, task.resume_dir,
                      head.name, task.num_classes, task.input_shape, data.label_scale)
        r0 = results[0]
        s.add(workers=len(results), attempts=r0.attempt + 1, initial_epoch=r0.initial_epoch,
              epochs=r0.epochs_completed, identical_weights=len({r.weights_sha256 for r in results}) == 1)
    _log_fit(results)

    with stage("train.evaluate") as s:
        from pipelines.training.model import build_network

        model = build_network(tc.network.model_dump(mode="json"), record.vector_size, head.name, task.num_classes,
                              task.input_shape, data.label_scale)
        model.set_weights(r0.weights or [])
        evaluated = {split: predict_on_driver(model, data.rows.filter(F.col("split") == split), head,
                                              record.vector_size, tc.seed, EVAL_ROWS, task.input_shape)
                     for split in ("validation", "test")}
        threshold = head.threshold(*evaluated["validation"])
        val_m = head.metrics(*evaluated["validation"], threshold, task.classes)
        test_m = head.metrics(*evaluated["test"], threshold, task.classes)
        s.add(**({"threshold": f"{threshold:.3f}"} if threshold is not None else {}), **head.summary(test_m))

    with stage("train.pyfunc") as s:
        meta = _meta(cfg, flow, task, run_id, threshold, val_m, test_m)
        info = pyfunc.log_model(model, meta, None if task.image else _download_preprocessing(record))
        diff = check_pyfunc(spark, cfg, store, flow, task, info.model_uri, model, meta)
        mlflow.log_metrics({**({"threshold": threshold} if threshold is not None else {}),
                            "pyfunc_check_max_abs_diff": diff,
                            **({"num_classes": task.num_classes} if task.classes else {}),
                            **{f"validation_{k}": v for k, v in val_m.items()},
                            **{f"test_{k}": v for k, v in test_m.items()}})
        s.add(max_abs_diff=f"{diff:.2g}")

    baselines: list[Any] = []
    if tc.baseline.enabled:
        with stage("train.baseline") as s:
            baselines = _baselines(cfg, task, data.rows, weights)
            if baselines:
                s.add(best=baselines[0].kind,
                      **{f"baseline_{k}": v for k, v in head.summary(baselines[0].test).items()})
    report_comparison(task, tc.promote_metric, evaluated["test"][0], val_m, test_m, baselines)
    _log_plots(task, r0.history, evaluated["test"], threshold, baselines, tc.backend)

    with stage("train.register") as s:
        metric, lower = head.promotion(tc.promote_metric)
        promo = register_and_promote(
            cfg.mlflow.registered_model, info.model_uri, f"test_{metric}", test_m[metric],
            {**({"threshold": repr(threshold)} if threshold is not None else {}), "train_run_id": run_id,
             "features_run_id": record.run_id, "feature_table_version": str(record.table_version),
             "flow": record.flow, "head": head.name},
            lower_is_better=lower)
        mlflow.set_tags({"registered_model": promo.name, "registered_version": promo.version,
                         "alias": promo.alias, "promote_metric": metric})
        s.add(model=promo.name, version=promo.version, alias=promo.alias,
              previous_champion=promo.previous_champion)
    for r in results:
        r.weights = None
    return TrainResult(run_id, info.model_uri, promo.name, promo.version, promo.alias,
                       float("nan") if threshold is None else threshold, test_m, val_m,
                       baselines[0].test if baselines else None, record.run_id, record.table_version, ckpt_dir, results,
                       r0.history, head.name, {b.kind: b.test for b in baselines})


def _log_inputs(cfg: Config, task: Task, data: TrainingData, weights: dict[int, float] | None, spe: int,
                vsteps: int, ckpt_dir: str) -> None:
    """Params (config, lineage, sizes, class weights, rows), tags and the config as config.json."""
    tc, record = cfg.training, task.record
    es = task.head.early_stopping(tc.early_stopping.model_dump(mode="json"))
    names = task.classes
    mlflow.log_params({**flat("training.", tc.model_dump(mode="json")), "flow": record.flow,
                       "head": task.head.name, "features_run_id": record.run_id, "feature_table": record.table_path,
                       "feature_table_version": record.table_version, "vector_size": record.vector_size,
                       **({"num_classes": task.num_classes,
                           "input_shape": str(list(task.input_shape) if task.input_shape else None)}
                          if names else {}),
                       "num_workers": tc.num_workers, "backend": tc.backend, "git_commit": git_commit(),
                       "steps_per_epoch": spe, "validation_steps": vsteps,
                       "effective_batch_size": tc.batch_size * tc.num_workers, "early_stopping_monitor": es["monitor"],
                       **{f"class_weight.{names[k] if names else k}": round(v, 6) for k, v in (weights or {}).items()},
                       **{f"rows.{k}": v["rows"] for k, v in data.counts.items()},
                       **{f"positives.{k}": v["positives"] for k, v in data.counts.items() if "positives" in v},
                       **{f"label_{m}.{k}": round(v[f"label_{m}"], 6) for k, v in data.counts.items()
                          for m in ("mean", "std") if f"label_{m}" in v}})
    mlflow.set_tags({"features_run_id": record.run_id, "feature_table_version": str(record.table_version),
                     "checkpoint_dir": ckpt_dir, "flow": record.flow, "head": task.head.name,
                     **({"resumed_from": task.resume_dir} if task.resume_dir else {})})
    log_config(cfg)


@contextmanager
def petastorm_caches(cfg: Config, data: DataFrame) -> Iterator[tuple[Any, Any]]:
    """Petastorm caches (train, validation) of the labeled rows, deleted on exit; a search shares one pair among
    its trials."""
    tc = cfg.training
    cache = to_uri(f"{cfg.workspace.rstrip('/')}/cache/petastorm")
    n_files = tc.num_workers * tc.data.files_per_worker
    columns = data.select("features", "label", "split")
    train_conv = ParquetCache.materialize(columns.filter(F.col("split") == "train").drop("split"), cache, n_files)
    try:
        val_conv = ParquetCache.materialize(columns.filter(F.col("split") == "validation").drop("split"), cache,
                                            n_files)
        try:
            yield train_conv, val_conv
        finally:
            val_conv.delete()
    finally:
        train_conv.delete()


def fit(spark: SparkSession, cfg: Config, data: DataFrame, vector_size: int, weights: dict[int, float] | None,
        spe: int, vsteps: int, ckpt_dir: str, resume_dir: str | None, head: str = "binary", num_classes: int = 2,
        input_shape: tuple[int, ...] | None = None, label_scale: tuple[float, float] | None = None
        ) -> list[WorkerResult]:
    """Distributed training: Petastorm caches of train and validation (deleted afterwards), then the barrier
    stage of the configured launcher; per-rank results ordered by rank. The workers build the network, loss and
    metrics of `head` (with `num_classes` for multiclass, `label_scale` for regression) over vectors, or images of
    `input_shape`."""
    with petastorm_caches(cfg, data) as caches:
        return fit_on(spark, cfg.training, caches, vector_size, weights, spe, vsteps, ckpt_dir, resume_dir, head,
                      num_classes, input_shape, label_scale)


def fit_on(spark: SparkSession, tc: TrainingConf, caches: tuple[Any, Any], vector_size: int,
           weights: dict[int, float] | None, spe: int, vsteps: int, ckpt_dir: str, resume_dir: str | None,
           head: str = "binary", num_classes: int = 2, input_shape: tuple[int, ...] | None = None,
           label_scale: tuple[float, float] | None = None,
           on_epoch: Callable[[dict[str, Any]], bool] | None = None) -> list[WorkerResult]:
    """The barrier stage of `tc`'s launcher on materialized caches; `on_epoch` sees rank 0's report of each epoch
    on the driver and stops the training by returning True (TrainingStopped)."""
    spec = WorkerSpec(backend=tc.backend, training=tc.model_dump(mode="json"), vector_size=vector_size,
                      steps_per_epoch=spe, validation_steps=vsteps, class_weight=weights,
                      train_data=caches[0], val_data=caches[1], checkpoint_dir=ckpt_dir,
                      resume_from=resume_dir, head=head, num_classes=num_classes, input_shape=input_shape,
                      label_scale=label_scale)
    LOG.info("train: %d %s workers, %s head, %d steps/epoch of %d rows/worker, validation %d steps, "
             "checkpoints %s", tc.num_workers, tc.backend, head, spe, tc.batch_size, vsteps, ckpt_dir)
    return make_launcher(spark, tc).run(spec, on_epoch)


def _log_fit(results: list[WorkerResult]) -> None:
    """Per-epoch metrics (rank 0's history, step = epoch) and the run-level training facts."""
    r0 = results[0]
    for rec in r0.history:
        mlflow.log_metrics({k: v for k, v in rec.items() if k != "epoch" and np.isfinite(v)}, step=int(rec["epoch"]))
    seconds = max(r.train_seconds for r in results)
    mlflow.log_metrics({"initial_epoch": r0.initial_epoch, "epochs_completed": r0.epochs_completed,
                        "stage_attempts": r0.attempt + 1, "stopped_early": float(r0.stopped_early),
                        "train_seconds": seconds,
                        "samples_per_second": sum(r.samples for r in results) / seconds if seconds else 0.0,
                        "identical_weights": float(len({r.weights_sha256 for r in results}) == 1),
                        **{f"worker_{k}_seconds": max(r.seconds.get(k, 0.0) for r in results)
                           for k in r0.seconds}})
    mlflow.set_tags({f"weights_sha256.rank{r.rank}": r.weights_sha256 for r in results})
    mlflow.log_dict([{k: v for k, v in r.__dict__.items() if k not in ("weights", "history")} for r in results],
                    "workers.json")


def _matrix(features: Any, vector_size: int, input_shape: tuple[int, ...] | None) -> np.ndarray:
    x = features_matrix(features, vector_size)
    return x.reshape((-1, *input_shape)) if input_shape else x


def predict_on_driver(model: Any, df: DataFrame, head: Head, vector_size: int, seed: int, max_rows: int,
                      input_shape: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(labels, the head's scores of the Keras model) for `df`, scored on the driver; above `max_rows` rows a
    seeded sample. `input_shape` reshapes the stored flat arrays for image models."""
    rows = df.count()
    if rows > max_rows:
        df = df.sample(fraction=max_rows / rows, seed=seed)
    pdf = df.select("label", "features").toPandas()
    raw = model.predict(_matrix(pdf["features"], vector_size, input_shape), batch_size=4096, verbose=0)
    return head.labels(pdf["label"].to_numpy()), head.scores(raw.astype("float64"))


def _meta(cfg: Config, flow: Any, task: Task, run_id: str, threshold: float | None, val_m: dict[str, float],
          test_m: dict[str, float]) -> dict[str, Any]:
    """meta.json of the pyfunc: head, what it reads (and the flow's extra meta, e.g. how images are decoded),
    threshold or classes, lineage and metrics."""
    record = task.record
    return {"head": task.head.name, "input": "image" if task.image else "features",
            "input_column": pyfunc.IMAGE_INPUT_COL if task.image else pyfunc.INPUT_COL,
            "vector_size": record.vector_size, "input_shape": list(task.input_shape) if task.input_shape else None,
            **({"threshold": threshold} if threshold is not None else {}),
            **({"classes": task.classes} if task.classes else {}),
            **flow.serving_meta(cfg),
            "flow": record.flow, "features_run_id": record.run_id, "feature_table": record.table_path,
            "feature_table_version": record.table_version, "train_run_id": run_id,
            "result_type": task.head.result_type, "validation": val_m, "test": test_m}


def check_pyfunc(spark: SparkSession, cfg: Config, store: DeltaStore, flow: Any, task: Task, model_uri: str,
                 model: Any, meta: dict[str, Any]) -> float:
    """The logged pyfunc, run as a Spark UDF on test rows exactly as scoring will (the flow gives its input: image
    bytes from bronze, or the feature arrays), must reproduce the Keras model; returns the largest difference."""
    udf = pyfunc.spark_udf(spark, model_uri, task.head.result_type)
    record = task.record
    test = (store.read(record.table_path, record.table_version)
            .filter(F.col("label").isNotNull() & (F.col("split") == "test")).limit(PARITY_ROWS))
    rows, column = flow.model_input(cfg, store, record, test)
    scored = rows.select("features", udf(column).alias("out")).toPandas()
    if scored.empty:
        raise RuntimeError(f"the pyfunc check of {model_uri} found no test rows to score")
    expected = model.predict(_matrix(scored["features"], record.vector_size, task.input_shape), verbose=0)
    diff, same = task.head.parity(expected.astype("float64"), scored["out"])
    if not same:
        raise RuntimeError(f"the logged model {model_uri} does not reproduce the trained model "
                           f"(max |difference| {diff} over {len(scored)} rows)")
    return diff


def _baselines(cfg: Config, task: Task, data: DataFrame, weights: dict[int, float] | None) -> list[Any]:
    """The head's MLlib baselines, one nested run each, ordered best first by the promotion metric on validation
    (never test); the best one's test metrics also go on the parent run as baseline_test_*, every one's as
    baseline_<kind>_test_*."""
    conf = cfg.training.baseline
    head = task.head
    results = head.baselines(data, conf, weights, cfg.training.seed, task.classes)
    for result in results:
        with job_run(cfg, f"{JOB}.baseline", nested=True):
            mlflow.set_tag("baseline_kind", result.kind)
            mlflow.log_params({"kind": result.kind, **flat("grid.", conf.model_dump(mode="json")),
                               **{f"best.{k}": v for k, v in result.best_params.items()}})
            mlflow.log_metrics({**({"threshold": result.threshold} if result.threshold is not None else {}),
                                **{f"validation_{k}": v for k, v in result.validation.items()},
                                **{f"test_{k}": v for k, v in result.test.items()}})
        mlflow.log_metrics({f"baseline_{result.kind}_test_{k}": v for k, v in result.test.items()})
    metric, lower = head.promotion(cfg.training.promote_metric)
    ordered = sorted(results, key=lambda r: _rank_value(r.validation.get(metric, float("nan")), lower))
    if ordered:
        mlflow.log_metrics({f"baseline_test_{k}": v for k, v in ordered[0].test.items()})
        mlflow.set_tag("best_baseline", ordered[0].kind)
    return ordered


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _rank_value(value: float, lower_is_better: bool) -> float:
    """Sort key, best first; NaN last."""
    if np.isnan(value):
        return float("inf")
    return value if lower_is_better else -value


def report_comparison(task: Task, promote_metric: str, test_labels: np.ndarray, val_m: dict[str, float],
                      test_m: dict[str, float], baselines: list[Any]) -> dict[str, Any]:
    """The training report: the Keras model against every baseline (best first, chosen on validation) on the same
    test rows, as report/model_comparison.json and .md on the run."""
    metric, lower = task.head.promotion(promote_metric)
    rows = [{"model": "keras", "params": {}, "validation": val_m.get(metric), "test": test_m.get(metric),
             "test_rows": len(test_labels)}]
    rows += [{"model": b.kind, "params": b.best_params, "validation": b.validation.get(metric),
              "test": b.test.get(metric), "test_rows": len(b.test_labels)} for b in baselines]
    report = {"metric": metric, "lower_is_better": lower, "best_baseline": baselines[0].kind if baselines else None,
              "same_test_rows": all(r["test_rows"] == len(test_labels) for r in rows), "models": rows}
    lines = [f"# Keras model vs MLlib baselines ({metric}, test split)", "",
             f"Best baseline (by validation {metric}): {report['best_baseline']}", "",
             f"| model | validation {metric} | test {metric} | test rows | tuned params |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {_fmt(r['validation'])} | {_fmt(r['test'])} | {r['test_rows']} | "
              f"{', '.join(f'{k}={v}' for k, v in r['params'].items())} |" for r in rows]
    mlflow.log_dict(report, "report/model_comparison.json")
    mlflow.log_text("\n".join(lines) + "\n", "report/model_comparison.md")
    return report


def _log_plots(task: Task, history: list[dict[str, float]], test: tuple[np.ndarray, np.ndarray],
               threshold: float | None, baselines: list[Any], backend: str) -> None:
    with tempfile.TemporaryDirectory(prefix="train-plots-") as tmp:
        out = Path(tmp)
        task.head.plots(out, *test, threshold, baselines, task.classes, backend)
        if history:
            plot_history(history, out / "training_history.png")
        mlflow.log_artifacts(tmp, "plots")


def _download_preprocessing(record: FeaturesRecord) -> str | None:
    """The features run's fitted PipelineModel as a local folder (shipped inside the pyfunc)."""
    try:
        return mlflow.artifacts.download_artifacts(record.model_uri, dst_path=tempfile.mkdtemp(prefix="prep-"))
    except Exception as e:
        LOG.warning("train: preprocessing model %s not available (%s); the model is logged without it",
                    record.model_uri, e)
        return None
