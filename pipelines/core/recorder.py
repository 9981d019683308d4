"""Tracking at the edges: one Recorder per job run owns its tags, params and metrics, and the features-run
contract (the tags a features run writes and training and scoring read back) lives here and nowhere else."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import mlflow

from pipelines.core.config import Config
from pipelines.core.logs import redact_config
from pipelines.core.tracking import configure_mlflow, job_run

FEATURES_JOB = "features"
PREPROCESSING_ARTIFACT = "preprocessing"
_MAX_PARAM = 500  # MLflow's limit on a param value


@dataclass(frozen=True)
class FeaturesRecord:
    """A finished features run: where its table version and fitted preprocessing are, and what it holds."""

    run_id: str
    table_path: str
    table_version: int
    model_path: str  # the saved preprocessing PipelineModel (PipelineModel.load)
    model_uri: str  # the same model as the run's artifact: runs:/<run_id>/preprocessing
    vector_size: int
    bronze_versions: dict[str, int] = field(default_factory=dict)
    flow: str = "tabular"
    head: str = "binary"  # binary | multiclass | regression
    classes: list[str] | None = None
    input_shape: list[int] | None = None


def log_config(cfg: Config) -> None:
    """Log the resolved config to the active run as config.json; secrets stay in the environment (masked)."""
    mlflow.log_dict(redact_config(cfg.model_dump(mode="json")), "config.json")


def flat(prefix: str, d: dict[str, Any]) -> dict[str, Any]:
    """Nested dict -> {prefix.a.b: value} (MLflow params are flat)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flat(key + ".", v) if isinstance(v, dict) else {key: v})
    return out


class Recorder:
    """The active run of one job: everything a job records goes through here."""

    def __init__(self, cfg: Config, run: mlflow.ActiveRun) -> None:
        self.cfg, self.run_id = cfg, run.info.run_id

    @classmethod
    @contextmanager
    def start(cls, cfg: Config, job: str, nested: bool = False) -> Iterator[Recorder]:
        """Open the job's MLflow run (tags: job, env, pipeline, flow, git commit) and record into it."""
        with job_run(cfg, job, nested) as run:
            mlflow.set_tags({"pipeline": cfg.pipeline, "flow": cfg.flow.kind})
            yield cls(cfg, run)

    def params(self, params: dict[str, Any]) -> None:
        """Log params (lists and dicts as JSON, strings cut to MLflow's limit), secret-looking values masked."""
        params = redact_config(params)
        mlflow.log_params({k: (json.dumps(v) if isinstance(v, list | dict) else v) if not isinstance(v, str)
                           else v[:_MAX_PARAM] for k, v in params.items()})

    def tags(self, tags: dict[str, Any]) -> None:
        mlflow.set_tags(redact_config({k: str(v) for k, v in tags.items()}))

    def metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}, step=step)

    def table_versions(self, layer: str, versions: dict[str, int]) -> None:
        """table_version.<layer>.<table> tags: the lineage of what the run read or wrote."""
        self.tags({f"table_version.{layer}.{t}": v for t, v in versions.items()})

    def report(self, obj: Any, name: str) -> None:
        mlflow.log_dict(redact_config(obj), name)

    def artifacts(self, folder: str, path: str | None = None) -> None:
        mlflow.log_artifacts(folder, path)

    def features_run(self, record: FeaturesRecord, feature_table: str) -> None:
        """The features-run contract: the tags `features_record` reads back."""
        self.tags({"feature_table": feature_table, "feature_table_path": record.table_path,
                   "feature_table_version": record.table_version, "preprocessing_path": record.model_path,
                   "preprocessing_artifact": PREPROCESSING_ARTIFACT, "vector_size": record.vector_size,
                   "head": record.head, **({"classes": json.dumps(record.classes)} if record.classes else {}),
                   **({"input_shape": json.dumps(record.input_shape)} if record.input_shape else {})})
        self.params({f"bronze_version.{t}": v for t, v in record.bronze_versions.items()})
        self.report({"run": asdict(record)}, "features_record.json")


def features_record(cfg: Config, run_id: str) -> FeaturesRecord:
    """A finished features run's record, read from its tags and params."""
    configure_mlflow(cfg)
    try:
        r = mlflow.get_run(run_id)
    except Exception as e:
        raise LookupError(f"no MLflow run {run_id}: {e}") from e
    tags = r.data.tags
    if tags.get("job") != FEATURES_JOB or "feature_table_version" not in tags:
        raise LookupError(f"run {run_id} is not a finished features run")
    versions = {k[len("bronze_version."):]: int(v) for k, v in r.data.params.items()
                if k.startswith("bronze_version.")}
    shape = tags.get("input_shape")
    return FeaturesRecord(
        run_id, tags["feature_table_path"], int(tags["feature_table_version"]), tags["preprocessing_path"],
        f"runs:/{run_id}/{tags['preprocessing_artifact']}", int(tags["vector_size"]), versions,
        tags.get("flow", "tabular"), tags.get("head", "binary"),
        json.loads(tags["classes"]) if "classes" in tags else None, json.loads(shape) if shape else None)


def latest_features_record(cfg: Config) -> FeaturesRecord:
    """The newest finished features run that wrote this config's feature table."""
    exp = configure_mlflow(cfg)
    path = cfg.catalog.path("features").replace("'", "\\'")
    runs = mlflow.search_runs(
        experiment_ids=[exp], output_format="list", max_results=1, order_by=["attributes.start_time DESC"],
        filter_string=f"tags.job = '{FEATURES_JOB}' and attributes.status = 'FINISHED' and "
                      f"tags.feature_table_path = '{path}'",
    )
    if not runs:
        raise LookupError(f"no finished features run for {path}: run `spark-submit.sh features` first")
    return features_record(cfg, runs[0].info.run_id)
