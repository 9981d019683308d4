"""The features-run contract training reads: FeaturesRecord, looked up by run id or as the latest features run.

Minimal stand-in built on today's lookups (pipelines.features.features_run / latest_features_run and the run's
tags), for the trainer and its tests; the shared Recorder replaces it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FeaturesRecord:
    run_id: str
    table_path: str
    table_version: int
    model_path: str
    model_uri: str
    vector_size: int
    bronze_versions: dict[str, int]
    flow: str
    head: str  # binary | multiclass | regression
    classes: list[str] | None
    input_shape: list[int] | None


def _record(run: Any) -> FeaturesRecord:
    import mlflow

    tags = mlflow.get_run(run.run_id).data.tags
    classes = json.loads(tags["classes"]) if "classes" in tags else None
    shape = json.loads(tags["input_shape"]) if "input_shape" in tags else None
    head = tags.get("head") or ("multiclass" if classes is not None else "binary")
    return FeaturesRecord(run.run_id, run.table_path, run.table_version, run.model_path, run.model_uri,
                          run.vector_size, dict(run.bronze_versions), tags.get("flow", "tabular"), head, classes,
                          shape)


def features_record(cfg: Any, run_id: str) -> FeaturesRecord:
    """The record of features run `run_id`; LookupError when it is not a finished features run."""
    from pipelines.features import features_run

    return _record(features_run(cfg, run_id))


def latest_features_record(cfg: Any) -> FeaturesRecord:
    """The record of the newest finished features run of this config's feature table; LookupError when none."""
    from pipelines.features import latest_features_run

    return _record(latest_features_run(cfg))
