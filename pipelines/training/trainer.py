"""The train run: resolved inputs (inputs.py) -> Keras model trained by N Horovod (or tf-mwms) workers in one barrier
stage (launch.py) -> evaluated on the driver (predict.py), logged as an MLflow pyfunc, checked through Spark,
compared with MLlib baselines (report.py) and registered, all in one MLflow run.

One run for every flow and task. What differs by task (binary, multiclass, regression) lives in its head
(heads.py); what differs by flow comes from the `flow` (its head, the pyfunc's input rows, the served model's input
description) and the features run's record (table version, classes, image shape), never from the flow's config
section. The steps:

  params/tags -> fit -> evaluate -> log pyfunc -> parity check through mlflow spark_udf -> baselines (nested runs)
  and the comparison report (report/model_comparison.md) -> plots -> register/promote.

The train job (pipelines/stages/train.py) resolves the inputs and calls `train_with`; the hyperparameter search
(search.py) calls it to retrain its best trial.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
from pyspark.sql import SparkSession

from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore
from pipelines.core.logs import LOG, stage
from pipelines.core.recorder import FeaturesRecord, Recorder, flat, log_config
from pipelines.core.tracking import git_commit
from pipelines.training import pyfunc, report
from pipelines.training.evaluate import plot_history
from pipelines.training.inputs import JOB, Task, TrainingData, checkpoint_root, class_weights
from pipelines.training.launch import Launch, fit
from pipelines.training.predict import Evaluation, check_pyfunc, evaluate_model, trained_model
from pipelines.training.registry import register_and_promote
from pipelines.training.spec import WorkerResult

if TYPE_CHECKING:
    from pipelines.flows.base import Flow


@dataclass
class TrainResult:
    """What the run produced; `workers` are the per-rank results (weights dropped)."""

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


def train_with(spark: SparkSession, cfg: Config, store: DeltaStore, flow: Flow, task: Task, data: TrainingData,
               nested: bool = False, tags: dict[str, str] | None = None) -> TrainResult:
    """One train run on resolved inputs (the job's, or the search's retrain of its best trial, `nested` under the
    search run and carrying its `tags`)."""
    with Recorder.start(cfg, JOB, nested=nested) as rec:
        if tags:
            rec.tags(tags)
        return _train_in_run(spark, cfg, store, flow, task, data, rec)


def _train_in_run(spark: SparkSession, cfg: Config, store: DeltaStore, flow: Flow, task: Task, data: TrainingData,
                  rec: Recorder) -> TrainResult:
    """The run's steps inside its MLflow run."""
    tc, record, head = cfg.training, task.record, task.head
    weights = class_weights(cfg, task, data)
    launch = Launch.of(tc, task, data, weights, f"{checkpoint_root(cfg)}/{rec.run_id}", task.resume_dir)
    _log_inputs(rec, cfg, task, data, launch)

    with stage("train.fit") as s:
        results = fit(spark, cfg, data.rows, launch)
        r0 = results[0]
        s.add(workers=len(results), attempts=r0.attempt + 1, initial_epoch=r0.initial_epoch,
              epochs=r0.epochs_completed, identical_weights=len({r.weights_sha256 for r in results}) == 1)
    _log_fit(rec, results)

    with stage("train.evaluate") as s:
        model = trained_model(tc, task, data, r0.weights or [])
        ev = evaluate_model(model, task, data, tc.seed)
        s.add(**({"threshold": f"{ev.threshold:.3f}"} if ev.threshold is not None else {}), **head.summary(ev.test))

    with stage("train.pyfunc") as s:
        meta = _meta(cfg, flow, task, rec.run_id, ev)
        info = pyfunc.log_model(model, meta,
                                _download_preprocessing(record) if pyfunc.ships_preprocessing(meta) else None)
        diff = check_pyfunc(spark, cfg, store, flow, task, info.model_uri, model)
        rec.metrics({**({"threshold": ev.threshold} if ev.threshold is not None else {}),
                     "pyfunc_check_max_abs_diff": diff,
                     **({"num_classes": task.num_classes} if task.classes else {}),
                     **{f"validation_{k}": v for k, v in ev.validation.items()},
                     **{f"test_{k}": v for k, v in ev.test.items()}})
        s.add(max_abs_diff=f"{diff:.2g}")

    baselines: list[Any] = []
    if tc.baseline.enabled:
        with stage("train.baseline") as s:
            baselines = _baselines(rec, cfg, task, data, weights)
            if baselines:
                s.add(best=baselines[0].kind,
                      **{f"baseline_{k}": v for k, v in head.summary(baselines[0].test).items()})
    metric, lower = head.promotion(tc.promote_metric)
    report.record(rec, *report.comparison(metric, lower, len(ev.test_labels), ev.validation, ev.test, baselines,
                                          tc.framework), "report/model_comparison")
    _log_plots(rec, task, r0.history, ev, baselines, f"{report.MODEL_NAMES[tc.framework][1]} ({tc.backend})")

    with stage("train.register") as s:
        promo = register_and_promote(
            cfg.mlflow.registered_model, info.model_uri, f"test_{metric}", ev.test[metric],
            {**({"threshold": repr(ev.threshold)} if ev.threshold is not None else {}), "train_run_id": rec.run_id,
             "features_run_id": record.run_id, "feature_table_version": str(record.table_version),
             "flow": record.flow, "head": head.name},
            lower_is_better=lower)
        rec.tags({"registered_model": promo.name, "registered_version": promo.version, "alias": promo.alias,
                  "promote_metric": metric})
        s.add(model=promo.name, version=promo.version, alias=promo.alias,
              previous_champion=promo.previous_champion)
    for r in results:
        r.weights = None
    return TrainResult(rec.run_id, info.model_uri, promo.name, promo.version, promo.alias,
                       float("nan") if ev.threshold is None else ev.threshold, ev.test, ev.validation,
                       baselines[0].test if baselines else None, record.run_id, record.table_version,
                       launch.checkpoint_dir, results, r0.history, head.name, {b.kind: b.test for b in baselines})


def _log_inputs(rec: Recorder, cfg: Config, task: Task, data: TrainingData, launch: Launch) -> None:
    """Params (config, lineage, sizes, class weights, rows), tags and the config as config.json."""
    tc, record = cfg.training, task.record
    es = task.head.early_stopping(tc.early_stopping.model_dump(mode="json"))
    names = task.classes
    rec.params({**flat("training.", tc.model_dump(mode="json")), "flow": record.flow,
                "head": task.head.name, "features_run_id": record.run_id, "feature_table": record.table_path,
                "feature_table_version": record.table_version, "vector_size": record.vector_size,
                **({"num_classes": task.num_classes,
                    "input_shape": str(list(task.input_shape) if task.input_shape else None)}
                   if names else {}),
                "num_workers": tc.num_workers, "framework": tc.framework, "backend": tc.backend,
                "git_commit": git_commit(),
                "steps_per_epoch": launch.steps_per_epoch, "validation_steps": launch.validation_steps,
                "effective_batch_size": tc.batch_size * tc.num_workers, "early_stopping_monitor": es["monitor"],
                **{f"class_weight.{names[k] if names else k}": round(v, 6)
                   for k, v in (launch.class_weight or {}).items()},
                **{f"rows.{k}": v["rows"] for k, v in data.counts.items()},
                **{f"positives.{k}": v["positives"] for k, v in data.counts.items() if "positives" in v},
                **{f"label_{m}.{k}": round(v[f"label_{m}"], 6) for k, v in data.counts.items()
                   for m in ("mean", "std") if f"label_{m}" in v}})
    rec.tags({"features_run_id": record.run_id, "feature_table_version": str(record.table_version),
              "checkpoint_dir": launch.checkpoint_dir, "flow": record.flow, "head": task.head.name,
              **({"resumed_from": task.resume_dir} if task.resume_dir else {})})
    log_config(cfg)


def _log_fit(rec: Recorder, results: list[WorkerResult]) -> None:
    """Per-epoch metrics (rank 0's history, step = epoch) and the run-level training facts."""
    r0 = results[0]
    for epoch in r0.history:
        rec.metrics({k: v for k, v in epoch.items() if k != "epoch" and np.isfinite(v)}, step=int(epoch["epoch"]))
    seconds = max(r.train_seconds for r in results)
    rec.metrics({"initial_epoch": r0.initial_epoch, "epochs_completed": r0.epochs_completed,
                 "stage_attempts": r0.attempt + 1, "stopped_early": float(r0.stopped_early),
                 "train_seconds": seconds,
                 "samples_per_second": sum(r.samples for r in results) / seconds if seconds else 0.0,
                 "identical_weights": float(len({r.weights_sha256 for r in results}) == 1),
                 **{f"worker_{k}_seconds": max(r.seconds.get(k, 0.0) for r in results) for k in r0.seconds}})
    rec.tags({f"weights_sha256.rank{r.rank}": r.weights_sha256 for r in results})
    rec.report([{k: v for k, v in r.__dict__.items() if k not in ("weights", "history")} for r in results],
               "workers.json")


def _meta(cfg: Config, flow: Flow, task: Task, run_id: str, ev: Evaluation) -> dict[str, Any]:
    """meta.json of the pyfunc: head, what it reads (the flow's description of the served input, e.g. how images
    are decoded, and the network's input shape), threshold or classes, lineage and metrics."""
    record = task.record
    return {"head": task.head.name, "framework": cfg.training.framework,
            **pyfunc.input_description(flow.serving_meta(cfg), record.vector_size, task.input_shape),
            **({"threshold": ev.threshold} if ev.threshold is not None else {}),
            **({"classes": task.classes} if task.classes else {}),
            "flow": record.flow, "features_run_id": record.run_id, "feature_table": record.table_path,
            "feature_table_version": record.table_version, "train_run_id": run_id,
            "result_type": task.head.result_type, "validation": ev.validation, "test": ev.test}


def _baselines(rec: Recorder, cfg: Config, task: Task, data: TrainingData, weights: dict[int, float] | None
               ) -> list[Any]:
    """The head's MLlib baselines, one nested run each, ordered best first by the promotion metric on validation
    (never test); the best one's test metrics also go on the parent run as baseline_test_*, every one's as
    baseline_<kind>_test_*."""
    conf = cfg.training.baseline
    head = task.head
    results = head.baselines(data.rows, conf, weights, cfg.training.seed, task.classes)
    for result in results:
        with Recorder.start(cfg, f"{JOB}.baseline", nested=True) as nested:
            nested.tags({"baseline_kind": result.kind})
            nested.params({"kind": result.kind, **flat("grid.", conf.model_dump(mode="json")),
                           **{f"best.{k}": v for k, v in result.best_params.items()}})
            nested.metrics({**({"threshold": result.threshold} if result.threshold is not None else {}),
                            **{f"validation_{k}": v for k, v in result.validation.items()},
                            **{f"test_{k}": v for k, v in result.test.items()}})
        rec.metrics({f"baseline_{result.kind}_test_{k}": v for k, v in result.test.items()})
    ordered = report.rank_baselines(results, *head.promotion(cfg.training.promote_metric))
    if ordered:
        rec.metrics({f"baseline_test_{k}": v for k, v in ordered[0].test.items()})
        rec.tags({"best_baseline": ordered[0].kind})
    return ordered


def _log_plots(rec: Recorder, task: Task, history: list[dict[str, float]], ev: Evaluation, baselines: list[Any],
               model: str) -> None:
    with tempfile.TemporaryDirectory(prefix="train-plots-") as tmp:
        out = Path(tmp)
        task.head.plots(out, ev.test_labels, ev.test_scores, ev.threshold, baselines, task.classes, model)
        if history:
            plot_history(history, out / "training_history.png")
        rec.artifacts(tmp, "plots")


def _download_preprocessing(record: FeaturesRecord) -> str | None:
    """The features run's fitted PipelineModel as a local folder (shipped inside the pyfunc)."""
    try:
        return mlflow.artifacts.download_artifacts(record.model_uri, dst_path=tempfile.mkdtemp(prefix="prep-"))
    except Exception as e:
        LOG.warning("train: preprocessing model %s not available (%s); the model is logged without it",
                    record.model_uri, e)
        return None
