"""The train job's stage: resolve what to train on (the features run, the flow's head, the checkpoint to resume
from), load its labeled rows, and hand them to the training package: one train run (`train_with`), or with
--search an Optuna search whose best configuration retrains (`search`). Both record into MLflow runs of their
own; the rows are unpersisted afterwards either way."""

from __future__ import annotations

from pyspark.sql import SparkSession

from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore
from pipelines.core.logs import stage
from pipelines.flows.base import Flow
from pipelines.training import (
    SearchResult,
    Task,
    TrainingData,
    TrainingInputError,
    TrainResult,
    hyperparameter_search,
    load_training_data,
    resolve_task,
    train_with,
)

__all__ = ["SearchResult", "TrainResult", "TrainingInputError", "run_search", "run_train"]


def run_train(spark: SparkSession, cfg: Config, store: DeltaStore, flow: Flow, features_run_id: str | None = None,
              resume: str | None = None) -> TrainResult:
    """The train job: features run -> data -> distributed training -> evaluation -> pyfunc -> baselines ->
    registry."""
    task = resolve_task(cfg, flow, features_run_id, resume)
    data = _load(store, cfg, task)
    try:
        return train_with(spark, cfg, store, flow, task, data)
    finally:
        data.rows.unpersist()


def run_search(spark: SparkSession, cfg: Config, store: DeltaStore, flow: Flow,
               features_run_id: str | None = None) -> SearchResult:
    """The train job with --search: trials (nested runs) under one parent run, then the best configuration
    retrains and registers through the champion rule."""
    task = resolve_task(cfg, flow, features_run_id, None)
    data = load_training_data(store, cfg, task.record, task.head)
    try:
        return hyperparameter_search(spark, cfg, store, flow, task, data)
    finally:
        data.rows.unpersist()


def _load(store: DeltaStore, cfg: Config, task: Task) -> TrainingData:
    """The task's labeled rows, with the train.data stage line (table version, sizes, rows per split)."""
    with stage("train.data") as s:
        data = load_training_data(store, cfg, task.record, task.head)
        s.add(table_version=task.record.table_version, vector_size=task.record.vector_size, head=task.head.name,
              **({"classes": len(task.classes)} if task.classes else {}),
              **{f"{k}_rows": v["rows"] for k, v in data.counts.items()})
    return data
