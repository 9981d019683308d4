"""One entry per job step that picks the flow's implementation from `cfg.flow.kind`, so the jobs stay the same for
every pipeline profile (selected by conf, never by copies of the jobs)."""

from __future__ import annotations

from typing import Any

from pyspark.sql import SparkSession

from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore


def run_features_for(spark: SparkSession, cfg: Config, store: DeltaStore) -> str:
    """The features job of the configured flow; returns its MLflow run id."""
    if cfg.flow.kind == "image":
        from pipelines.flows.image import run_features as image_features

        return image_features(spark, cfg, store).run_id
    if cfg.flow.kind == "text":
        from pipelines.flows.text import run_features as text_features

        return text_features(spark, cfg, store).run_id
    from pipelines.features import run_features

    return run_features(spark, cfg, store).run.run_id


def run_train_for(spark: SparkSession, cfg: Config, store: DeltaStore, features_run_id: str | None = None,
                  resume: str | None = None) -> Any:
    """The train job: the binary tabular trainer, or the multiclass trainer of the image and text flows."""
    if cfg.flow.kind == "tabular":
        from pipelines.training.job import run_train

        return run_train(spark, cfg, store, features_run_id=features_run_id, resume=resume)
    from pipelines.training.classifier import run_train_classifier

    return run_train_classifier(spark, cfg, store, features_run_id=features_run_id, resume=resume)


def run_score_for(spark: SparkSession, cfg: Config, store: DeltaStore, alias: str | None = None,
                  version: int | None = None) -> dict[str, Any]:
    """Batch scoring of the image and text flows (the tabular flow scores by date: pipelines.scoring)."""
    from pipelines.flows.scoring import score

    return score(spark, cfg, store, alias, version)
