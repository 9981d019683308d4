"""train for the image and text flows: a multiclass Keras model (CNN on images, MLP on text vectors) trained by
the same barrier-mode Horovod launcher and Petastorm feed as the tabular model, then evaluated against an MLlib
multinomial logistic regression, logged as a pyfunc (serving_classifier.py) and registered.

Driver side only; the workers run pipelines.training.remote with the class count and, for images, the input
shape (Petastorm's TransformSpec reshapes the stored flat arrays to it).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore
from pipelines.core.logs import stage
from pipelines.core.tracking import git_commit, job_run
from pipelines.flows.common import flow_tags
from pipelines.training import pyfunc
from pipelines.training.driver import steps_per_epoch
from pipelines.training.evaluate import features_matrix, multiclass_metrics, plot_confusion_classes, plot_history
from pipelines.training.job import (
    JOB,
    TrainingInputError,
    TrainResult,
    _download_preprocessing,
    _flat,
    _log_fit,
    checkpoint_root,
    fit,
    load_training_data,
    predict_on_driver,
    resolve_resume,
    resolve_source,
)
from pipelines.training.registry import register_and_promote

EVAL_ROWS = 200_000  # validation/test rows scored on the driver for the metrics (seeded sample above this)
PARITY_ROWS = 256  # rows the logged pyfunc must reproduce exactly


def class_weights(counts: dict[int, int], num_classes: int) -> dict[int, float]:
    """Inverse class frequency on train, normalised so balanced classes all get 1.0."""
    n = sum(counts.values())
    missing = [k for k in range(num_classes) if counts.get(k, 0) == 0]
    if missing:
        raise TrainingInputError(f"the train split has no rows of class ids {missing}")
    return {k: n / (num_classes * counts[k]) for k in range(num_classes)}


def run_train_classifier(spark: SparkSession, cfg: Config, store: DeltaStore, features_run_id: str | None = None,
                         resume: str | None = None) -> TrainResult:
    """The train job of the image and text flows: data -> barrier training -> evaluation -> baseline -> registry."""
    source = resolve_source(cfg, features_run_id)
    try:
        classes, shape = flow_tags(source.run_id)
    except LookupError as e:
        raise TrainingInputError(str(e)) from e
    if cfg.training.network.kind == "cnn" and not shape:
        raise TrainingInputError("training.network.kind cnn needs image features; this features run has none")
    input_shape = tuple(shape) if shape and cfg.training.network.kind == "cnn" else None
    resume_dir = resolve_resume(cfg, resume) if resume else None
    with stage("train.data") as s:
        data, counts = load_training_data(store, cfg, source)
        per_class = {int(r["label"]): int(r["count"])
                     for r in data.filter(F.col("split") == "train").groupBy("label").count().collect()}
        s.add(table_version=source.table_version, vector_size=source.vector_size, classes=len(classes),
              **{f"{k}_rows": v["rows"] for k, v in counts.items()})
    try:
        with job_run(cfg, JOB) as active:
            return _train(spark, cfg, store, data, counts, per_class, source, classes, input_shape,
                          active.info.run_id, resume_dir)
    finally:
        data.unpersist()


def _train(spark: SparkSession, cfg: Config, store: DeltaStore, data: DataFrame, counts: dict[str, dict[str, int]],
           per_class: dict[int, int], source: Any, classes: list[str], input_shape: tuple[int, ...] | None,
           run_id: str, resume_dir: str | None) -> TrainResult:
    tc = cfg.training
    k = len(classes)
    weights = class_weights(per_class, k) if tc.class_weights else None
    if not tc.class_weights and any(per_class.get(i, 0) == 0 for i in range(k)):
        raise TrainingInputError(f"the train split lacks classes: counts {per_class}")
    n = tc.num_workers
    spe = steps_per_epoch(counts["train"]["rows"], tc.batch_size, n, tc.max_steps_per_epoch)
    vsteps = steps_per_epoch(counts["validation"]["rows"], tc.batch_size, n, tc.max_steps_per_epoch)
    ckpt_dir = f"{checkpoint_root(cfg)}/{run_id}"
    mlflow.log_params({**_flat("training.", tc.model_dump(mode="json")), "flow": cfg.flow.kind,
                       "features_run_id": source.run_id, "feature_table": source.table_path,
                       "feature_table_version": source.table_version, "vector_size": source.vector_size,
                       "num_classes": k, "input_shape": str(list(input_shape) if input_shape else None),
                       "num_workers": n, "git_commit": git_commit(), "steps_per_epoch": spe,
                       "validation_steps": vsteps, "effective_batch_size": tc.batch_size * n,
                       **{f"class_weight.{classes[i]}": round(w, 6) for i, w in (weights or {}).items()},
                       **{f"rows.{s}": v["rows"] for s, v in counts.items()}})
    mlflow.set_tags({"features_run_id": source.run_id, "feature_table_version": str(source.table_version),
                     "checkpoint_dir": ckpt_dir, "flow": cfg.flow.kind})
    mlflow.log_dict(cfg.model_dump(mode="json"), "config.json")

    with stage("train.fit") as s:
        results = fit(spark, cfg, data, source, weights, spe, vsteps, ckpt_dir, resume_dir, k, input_shape)
        r0 = results[0]
        s.add(workers=len(results), attempts=r0.attempt + 1, epochs=r0.epochs_completed,
              identical_weights=len({r.weights_sha256 for r in results}) == 1)
    _log_fit(results)

    with stage("train.evaluate") as s:
        from pipelines.training.model import build_network

        model = build_network(tc.network.model_dump(mode="json"), source.vector_size, k, input_shape)
        model.set_weights(r0.weights or [])
        evaluated = {split: predict_on_driver(model, data.filter(F.col("split") == split), source.vector_size,
                                              tc.seed, EVAL_ROWS, input_shape) for split in ("validation", "test")}
        val_m = multiclass_metrics(*evaluated["validation"], classes)
        test_m = multiclass_metrics(*evaluated["test"], classes)
        meta = _meta(cfg, source, classes, input_shape, run_id, val_m, test_m)
        info = pyfunc.log_classifier(model, meta, None if input_shape else _download_preprocessing(source))
        diff = _check_pyfunc(spark, cfg, store, info.model_uri, model, data, source, input_shape)
        mlflow.log_metrics({"pyfunc_check_max_abs_diff": diff, "num_classes": k,
                            **{f"validation_{m}": v for m, v in val_m.items()},
                            **{f"test_{m}": v for m, v in test_m.items()}})
        s.add(test_accuracy=f"{test_m['accuracy']:.4f}", test_macro_f1=f"{test_m['macro_f1']:.4f}")

    baseline = None
    if tc.baseline.enabled:
        with stage("train.baseline") as s:
            baseline = _baseline(cfg, data, weights, classes)
            s.add(kind=baseline.kind, test_accuracy=f"{baseline.test['accuracy']:.4f}")
    _log_plots(r0.history, evaluated["test"], baseline, classes)

    with stage("train.register") as s:
        metric = tc.promote_metric if tc.promote_metric in test_m else "accuracy"
        promo = register_and_promote(cfg.mlflow.registered_model, info.model_uri, f"test_{metric}", test_m[metric],
                                     {"train_run_id": run_id, "features_run_id": source.run_id,
                                      "feature_table_version": str(source.table_version), "flow": cfg.flow.kind})
        mlflow.set_tags({"registered_model": promo.name, "registered_version": promo.version,
                         "alias": promo.alias})
        s.add(model=promo.name, version=promo.version, alias=promo.alias)
    for r in results:
        r.weights = None
    return TrainResult(run_id, info.model_uri, promo.name, promo.version, promo.alias, float("nan"), test_m,
                       val_m, baseline.test if baseline else None, source.run_id, source.table_version, ckpt_dir,
                       results, r0.history)


def _meta(cfg: Config, source: Any, classes: list[str], input_shape: tuple[int, ...] | None, run_id: str,
          val_m: dict[str, float], test_m: dict[str, float]) -> dict[str, Any]:
    """meta.json of the pyfunc: what it reads, how images are decoded, the classes, lineage and metrics."""
    ic = cfg.flow
    return {"input": "image" if input_shape else "features", "classes": classes,
            "vector_size": source.vector_size, "input_shape": list(input_shape) if input_shape else None,
            "decode": {"height": ic.height, "width": ic.width, "channels": ic.channels, "resample": ic.resample,
                       "normalize": ic.normalize} if input_shape else None,
            "flow": cfg.flow.kind, "features_run_id": source.run_id, "feature_table": source.table_path,
            "feature_table_version": source.table_version, "train_run_id": run_id,
            "result_type": pyfunc.CLASSIFIER_RESULT_TYPE, "validation": val_m, "test": test_m}


def _matrix(features: Any, vector_size: int, input_shape: tuple[int, ...] | None) -> np.ndarray:
    x = features_matrix(features, vector_size)
    return x.reshape((-1, *input_shape)) if input_shape else x


def _check_pyfunc(spark: SparkSession, cfg: Config, store: DeltaStore, model_uri: str, model: Any, data: DataFrame,
                  source: Any, input_shape: tuple[int, ...] | None) -> float:
    """The logged pyfunc, run as a Spark UDF on test rows exactly as scoring will (image bytes from bronze for
    images), must give the Keras model's classes and probabilities; returns the largest probability gap."""
    udf = mlflow.pyfunc.spark_udf(spark, model_uri, result_type=pyfunc.CLASSIFIER_RESULT_TYPE, env_manager="local")
    if input_shape:  # the images' bytes from bronze, joined by key to test rows of the trained table version
        key, content = cfg.flow.key, cfg.flow.content_column
        test = (store.read(source.table_path, source.table_version).filter(F.col("split") == "test")
                .select(key, "features").limit(PARITY_ROWS))
        bronze = cfg.catalog.path(cfg.features.source_table)
        images = store.read(bronze, source.bronze_versions.get(cfg.features.source_table)).select(key, content)
        rows = test.join(images, key).select("features", udf(content).alias("out")).toPandas()
    else:
        test = data.filter(F.col("split") == "test").limit(PARITY_ROWS)
        rows = test.select("features", udf(pyfunc.INPUT_COL).alias("out")).toPandas()
    if rows.empty:
        raise RuntimeError(f"the pyfunc check of {model_uri} found no test rows to score")
    expected = model.predict(_matrix(rows["features"], source.vector_size, input_shape), verbose=0)
    got_ids = np.array([o["prediction"] for o in rows["out"]])
    got_p = np.array([o["probability"] for o in rows["out"]])
    diff = float(np.max(np.abs(got_p - expected.max(axis=1))))
    if not (np.array_equal(got_ids, expected.argmax(axis=1)) and diff <= 1e-5):
        raise RuntimeError(f"the logged model {model_uri} does not reproduce the trained model "
                           f"(max |probability difference| {diff} over {len(rows)} rows)")
    return diff


def _baseline(cfg: Config, data: DataFrame, weights: dict[int, float] | None, classes: list[str]) -> Any:
    """MLlib multinomial logistic regression on the same vectors, as a nested run; baseline_test_* on the parent."""
    from pipelines.training.baseline import train_multiclass_baseline

    with job_run(cfg, f"{JOB}.baseline", nested=True):
        result = train_multiclass_baseline(data, cfg.training.baseline, weights, cfg.training.seed, classes)
        mlflow.log_params({"kind": result.kind, **{f"best.{k}": v for k, v in result.best_params.items()}})
        mlflow.log_metrics({**{f"validation_{k}": v for k, v in result.validation.items()},
                            **{f"test_{k}": v for k, v in result.test.items()}})
    mlflow.log_metrics({f"baseline_test_{k}": v for k, v in result.test.items()})
    return result


def _log_plots(history: list[dict[str, float]], test: tuple[np.ndarray, np.ndarray], baseline: Any,
               classes: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="train-plots-") as tmp:
        out = Path(tmp)
        y, proba = test
        plot_confusion_classes(y, proba.argmax(axis=1), classes, out / "confusion_matrix_test.png",
                               "Keras model, test split")
        if baseline is not None:
            plot_confusion_classes(baseline.test_labels, baseline.test_probabilities.argmax(axis=1), classes,
                                   out / "confusion_matrix_test_baseline.png", "MLlib logreg, test split")
        if history:
            plot_history(history, out / "training_history.png")
        mlflow.log_artifacts(tmp, "plots")
