"""train: silver feature table -> Keras model trained by N Horovod (or tf-mwms) workers in one barrier stage ->
evaluated, compared with an MLlib baseline, logged as an MLflow pyfunc and registered.

Everything is one MLflow run: the config, the features run and feature-table version it trained on, the
number of workers, per-epoch metrics (rank 0's history, shipped back to the driver), test metrics and plots,
the baseline as a nested run, and the registered version with its alias.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore
from pipelines.core.files import to_uri
from pipelines.core.logs import LOG, stage
from pipelines.core.tracking import configure_mlflow, git_commit, job_run
from pipelines.training import checkpoints, pyfunc
from pipelines.training.data import ParquetCache
from pipelines.training.driver import make_launcher, steps_per_epoch
from pipelines.training.evaluate import (
    best_f1_threshold,
    binary_metrics,
    features_matrix,
    plot_confusion,
    plot_history,
    plot_roc,
)
from pipelines.training.registry import register_and_promote
from pipelines.training.spec import WorkerResult, WorkerSpec

JOB = "train"
SPLITS = ("train", "validation", "test")
PYFUNC_CHECK_ROWS = 256
THRESHOLD_ROWS = 500_000


class TrainingInputError(ValueError):
    """The feature table or an argument cannot be used (no features run, empty split, bad --resume)."""


@dataclass
class TrainResult:
    """What the job produced; `workers` are the per-rank results (weights dropped)."""

    run_id: str
    model_uri: str
    registered_model: str
    version: str
    alias: str
    threshold: float
    test: dict[str, float]
    validation: dict[str, float]
    baseline_test: dict[str, float] | None
    features_run_id: str
    table_version: int
    checkpoint_dir: str
    workers: list[WorkerResult] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)


def checkpoint_root(cfg: Config) -> str:
    return (cfg.training.checkpoint_dir or f"{cfg.workspace.rstrip('/')}/checkpoints").rstrip("/")


def resolve_source(cfg: Config, features_run_id: str | None) -> Any:
    """The features run to train on: the given id, training.data.features_run_id, or the latest one."""
    from pipelines.features import features_run, latest_features_run

    run_id = features_run_id or cfg.training.data.features_run_id
    try:
        return features_run(cfg, run_id) if run_id else latest_features_run(cfg)
    except LookupError as e:
        raise TrainingInputError(str(e)) from e


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


def load_training_data(store: DeltaStore, cfg: Config, source: Any) -> tuple[DataFrame, dict[str, dict[str, int]]]:
    """Labeled rows (split, label, features) of the pinned table version, persisted, with per-split counts."""
    from pipelines.features import read_feature_table

    table = read_feature_table(store, source)
    missing = {"split", "label", "features"} - set(table.columns)
    if missing:
        raise TrainingInputError(f"feature table {source.table_path} v{source.table_version} lacks {sorted(missing)}")
    data = (table.filter(F.col("label").isNotNull() & F.col("split").isin(*SPLITS))
            .select("split", F.col("label").cast("int").alias("label"), F.col("features").cast("array<float>")))
    fraction = cfg.training.data.sample_fraction
    if fraction < 1:
        data = data.sample(fraction=fraction, seed=cfg.training.seed)
    data = data.persist(StorageLevel.MEMORY_AND_DISK)
    rows = (data.groupBy("split")
            .agg(F.count("*").alias("rows"), F.sum("label").alias("positives"),
                 F.min(F.size("features")).alias("min_len"), F.max(F.size("features")).alias("max_len"))
            .collect())
    counts = {r["split"]: {"rows": int(r["rows"]), "positives": int(r["positives"] or 0),
                           "min_len": int(r["min_len"]), "max_len": int(r["max_len"])} for r in rows}
    empty = [s for s in SPLITS if counts.get(s, {}).get("rows", 0) == 0]
    if empty:
        data.unpersist()
        raise TrainingInputError(f"feature table {source.table_path} v{source.table_version}: no labeled rows "
                                 f"in split(s) {empty}")
    lengths = {c[k] for c in counts.values() for k in ("min_len", "max_len")}
    if lengths != {source.vector_size}:
        data.unpersist()
        raise TrainingInputError(f"features arrays have lengths {sorted(lengths)}, the features run says "
                                 f"{source.vector_size}")
    return data, counts


def class_weights(train: dict[str, int]) -> dict[int, float]:
    """Inverse class frequency on the train split, normalised so a balanced set gets 1.0 / 1.0."""
    n, pos = train["rows"], train["positives"]
    if pos == 0 or pos == n:
        raise TrainingInputError("the train split has a single class; nothing to learn")
    return {0: n / (2.0 * (n - pos)), 1: n / (2.0 * pos)}


def _flat(prefix: str, d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(key + ".", v) if isinstance(v, dict) else {key: v})
    return out


def run_train(spark: SparkSession, cfg: Config, store: DeltaStore, features_run_id: str | None = None,
              resume: str | None = None) -> TrainResult:
    """The train job: data -> distributed training -> evaluation -> baseline -> pyfunc -> registry."""
    source = resolve_source(cfg, features_run_id)
    resume_dir = resolve_resume(cfg, resume) if resume else None
    with stage("train.data") as s:
        data, counts = load_training_data(store, cfg, source)
        s.add(table_version=source.table_version, vector_size=source.vector_size,
              **{f"{k}_rows": v["rows"] for k, v in counts.items()})
    try:
        with job_run(cfg, JOB) as active:
            return _train_in_run(spark, cfg, data, counts, source, active.info.run_id, resume_dir)
    finally:
        data.unpersist()


def _train_in_run(spark: SparkSession, cfg: Config, data: DataFrame, counts: dict[str, dict[str, int]],
                  source: Any, run_id: str, resume_dir: str | None) -> TrainResult:
    """The job's steps inside its MLflow run: params, fit, evaluate, baseline, plots, register."""
    tc = cfg.training
    weights = class_weights(counts["train"]) if tc.class_weights else None
    n = tc.num_workers
    spe = steps_per_epoch(counts["train"]["rows"], tc.batch_size, n, tc.max_steps_per_epoch)
    vsteps = steps_per_epoch(counts["validation"]["rows"], tc.batch_size, n, tc.max_steps_per_epoch)
    ckpt_dir = f"{checkpoint_root(cfg)}/{run_id}"
    mlflow.log_params({**_flat("training.", tc.model_dump(mode="json")), "features_run_id": source.run_id,
                       "feature_table": source.table_path, "feature_table_version": source.table_version,
                       "vector_size": source.vector_size, "num_workers": n, "backend": tc.backend,
                       "git_commit": git_commit(),
                       "steps_per_epoch": spe, "validation_steps": vsteps,
                       "effective_batch_size": tc.batch_size * n,
                       **{f"class_weight.{k}": round(v, 6) for k, v in (weights or {}).items()},
                       **{f"rows.{k}": v["rows"] for k, v in counts.items()},
                       **{f"positives.{k}": v["positives"] for k, v in counts.items()}})
    mlflow.set_tags({"features_run_id": source.run_id, "feature_table_version": str(source.table_version),
                     "checkpoint_dir": ckpt_dir, **({"resumed_from": resume_dir} if resume_dir else {})})
    mlflow.log_dict(cfg.model_dump(mode="json"), "config.json")

    with stage("train.fit") as s:
        results = fit(spark, cfg, data, source, weights, spe, vsteps, ckpt_dir, resume_dir)
        r0 = results[0]
        s.add(workers=len(results), attempts=r0.attempt + 1, initial_epoch=r0.initial_epoch,
              epochs=r0.epochs_completed, identical_weights=len({r.weights_sha256 for r in results}) == 1)
    _log_fit(results)

    with stage("train.evaluate") as s:
        model = _keras_from(cfg, source.vector_size, r0.weights or [])
        yv, pv = _predict_on_driver(model, data.filter(F.col("split") == "validation"), source.vector_size,
                                    cfg.training.seed)
        threshold, _ = best_f1_threshold(yv, pv)
        val_m = binary_metrics(yv, pv, threshold)
        meta = {"threshold": threshold, "vector_size": source.vector_size, "features_run_id": source.run_id,
                "feature_table": source.table_path, "feature_table_version": source.table_version,
                "train_run_id": run_id, "input_column": pyfunc.INPUT_COL, "result_type": pyfunc.RESULT_TYPE,
                "validation": val_m}
        info = pyfunc.log_model(model, meta, _download_preprocessing(source))
        yt, pt, diff = _score_test_with_pyfunc(spark, info.model_uri, data, model, source.vector_size)
        test_m = binary_metrics(yt, pt, threshold)
        mlflow.log_metrics({"threshold": threshold, "pyfunc_check_max_abs_diff": diff,
                            **{f"validation_{k}": v for k, v in val_m.items()},
                            **{f"test_{k}": v for k, v in test_m.items()}})
        s.add(threshold=f"{threshold:.3f}", test_roc_auc=f"{test_m['roc_auc']:.4f}",
              test_pr_auc=f"{test_m['pr_auc']:.4f}")

    baseline = None
    if cfg.training.baseline.enabled:
        with stage("train.baseline") as s:
            baseline = _baseline(cfg, data, weights)
            s.add(kind=baseline.kind, test_roc_auc=f"{baseline.test['roc_auc']:.4f}")
    _log_plots(r0.history, yt, pt, threshold, baseline, tc.backend)

    with stage("train.register") as s:
        metric = cfg.training.promote_metric
        promo = register_and_promote(cfg.mlflow.registered_model, info.model_uri, f"test_{metric}",
                                     test_m[metric], {"threshold": repr(threshold), "train_run_id": run_id,
                                                      "features_run_id": source.run_id,
                                                      "feature_table_version": str(source.table_version)})
        mlflow.set_tags({"registered_model": promo.name, "registered_version": promo.version,
                         "alias": promo.alias})
        s.add(model=promo.name, version=promo.version, alias=promo.alias,
              previous_champion=promo.previous_champion)
    for r in results:
        r.weights = None
    return TrainResult(run_id, info.model_uri, promo.name, promo.version, promo.alias, threshold, test_m, val_m,
                       baseline.test if baseline else None, source.run_id, source.table_version, ckpt_dir,
                       results, r0.history)


def fit(spark: SparkSession, cfg: Config, data: DataFrame, source: Any, weights: dict[int, float] | None,
        spe: int, vsteps: int, ckpt_dir: str, resume_dir: str | None, num_classes: int = 2,
        input_shape: tuple[int, ...] | None = None) -> list[WorkerResult]:
    """Distributed training: Petastorm caches of train and validation (deleted afterwards), then the barrier
    stage of the configured launcher; per-rank results ordered by rank. The image and text flows pass their
    class count and (images) the input shape."""
    tc = cfg.training
    ws = cfg.workspace.rstrip("/")
    cache = to_uri(f"{ws}/cache/petastorm")
    n_files = tc.num_workers * tc.data.files_per_worker
    columns = data.select("features", "label", "split")
    train_conv = ParquetCache.materialize(columns.filter(F.col("split") == "train").drop("split"), cache, n_files)
    try:
        val_conv = ParquetCache.materialize(columns.filter(F.col("split") == "validation").drop("split"), cache,
                                            n_files)
        try:
            spec = WorkerSpec(backend=tc.backend, training=tc.model_dump(mode="json"),
                              vector_size=source.vector_size, steps_per_epoch=spe, validation_steps=vsteps,
                              class_weight=weights, train_data=train_conv, val_data=val_conv,
                              checkpoint_dir=ckpt_dir, resume_from=resume_dir, num_classes=num_classes,
                              input_shape=input_shape)
            LOG.info("train: %d %s workers, %d steps/epoch of %d rows/worker, validation %d steps, checkpoints %s",
                     tc.num_workers, tc.backend, spe, tc.batch_size, vsteps, ckpt_dir)
            return make_launcher(spark, tc).run(spec)
        finally:
            val_conv.delete()
    finally:
        train_conv.delete()


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


def _keras_from(cfg: Config, vector_size: int, weights: list[np.ndarray]) -> Any:
    from pipelines.training.model import build_network

    model = build_network(cfg.training.network.model_dump(mode="json"), vector_size)
    model.set_weights(weights)
    return model


def _baseline(cfg: Config, data: DataFrame, weights: dict[int, float] | None) -> Any:
    """The MLlib baseline as a nested run; its test metrics also go on the parent run as baseline_test_*."""
    from pipelines.training.baseline import train_baseline

    with job_run(cfg, f"{JOB}.baseline", nested=True):
        result = train_baseline(data, cfg.training.baseline, weights, cfg.training.seed)
        mlflow.log_params({"kind": result.kind, **_flat("grid.", cfg.training.baseline.model_dump(mode="json")),
                           **{f"best.{k}": v for k, v in result.best_params.items()}})
        mlflow.log_metrics({"threshold": result.threshold,
                            **{f"validation_{k}": v for k, v in result.validation.items()},
                            **{f"test_{k}": v for k, v in result.test.items()}})
    mlflow.log_metrics({f"baseline_test_{k}": v for k, v in result.test.items()})
    return result


def _log_plots(history: list[dict[str, float]], y: np.ndarray, p: np.ndarray, threshold: float,
               baseline: Any, backend: str) -> None:
    with tempfile.TemporaryDirectory(prefix="train-plots-") as tmp:
        out = Path(tmp)
        plot_confusion(y, p, threshold, out / "confusion_matrix_test.png", "Keras model, test split")
        curves = {f"Keras ({backend})": (y, p)}
        if baseline is not None:
            curves[f"MLlib {baseline.kind}"] = (baseline.test_labels, baseline.test_probabilities)
            plot_confusion(baseline.test_labels, baseline.test_probabilities, baseline.threshold,
                           out / "confusion_matrix_test_baseline.png", f"MLlib {baseline.kind}, test split")
        plot_roc(curves, out / "roc_curve_test.png", "ROC, test split")
        if history:
            plot_history(history, out / "training_history.png")
        mlflow.log_artifacts(tmp, "plots")


def _download_preprocessing(source: Any) -> str | None:
    """The features run's fitted PipelineModel as a local folder (shipped inside the pyfunc)."""
    try:
        return mlflow.artifacts.download_artifacts(source.model_uri, dst_path=tempfile.mkdtemp(prefix="prep-"))
    except Exception as e:
        LOG.warning("train: preprocessing model %s not available (%s); the model is logged without it",
                    source.model_uri, e)
        return None


def predict_on_driver(model: Any, df: DataFrame, vector_size: int, seed: int, max_rows: int,
                      input_shape: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(labels, the Keras model's outputs [rows, outputs]) for `df`, scored on the driver; above `max_rows` rows
    a seeded sample. `input_shape` reshapes the stored flat arrays for image models."""
    rows = df.count()
    if rows > max_rows:
        df = df.sample(fraction=max_rows / rows, seed=seed)
    pdf = df.select("label", "features").toPandas()
    x = features_matrix(pdf["features"], vector_size)
    p = model.predict(x.reshape((-1, *input_shape)) if input_shape else x, batch_size=4096, verbose=0)
    return pdf["label"].to_numpy().astype(int), p.astype("float64")


def _predict_on_driver(model: Any, df: DataFrame, vector_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probabilities) of the validation split, for the threshold. Above THRESHOLD_ROWS rows a seeded
    sample is used (a threshold needs no more)."""
    y, p = predict_on_driver(model, df, vector_size, seed, THRESHOLD_ROWS)
    return y, p.reshape(-1)


def _score_test_with_pyfunc(spark: SparkSession, model_uri: str, data: DataFrame, model: Any,
                            vector_size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Test (labels, probabilities) scored through the logged pyfunc's Spark UDF, exactly as scoring will; only
    two numbers per row come back to the driver. Also checks the UDF against the Keras model on a few rows
    (largest absolute difference returned; above 1e-5 is an error)."""
    udf = pyfunc.spark_udf(spark, model_uri)
    test = data.filter(F.col("split") == "test")
    scored = test.select("label", udf(pyfunc.INPUT_COL).alias("out")).select("label", "out.probability").toPandas()
    sample = test.limit(PYFUNC_CHECK_ROWS).select("features", udf(pyfunc.INPUT_COL).alias("out")).toPandas()
    expected = model.predict(features_matrix(sample["features"], vector_size), verbose=0).reshape(-1)
    got = np.array([o["probability"] for o in sample["out"]])
    diff = float(np.max(np.abs(got - expected))) if len(got) else float("inf")
    if not diff <= 1e-5:
        raise RuntimeError(f"the logged model {model_uri} does not reproduce the trained model "
                           f"(max |difference| {diff} over {len(got)} rows)")
    return scored["label"].to_numpy().astype(int), scored["probability"].to_numpy(), diff
