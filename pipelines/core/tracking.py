"""MLflow set-up shared by every job: tracking URI and experiment from config, lineage tags on each run."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from pipelines.core.config import REPO_ROOT, Config
from pipelines.core.locks import file_lock
from pipelines.core.logs import redact


def git_commit() -> str:
    """The code version for lineage: the git commit of the project, or 'unknown' outside a checkout."""
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def configure_mlflow(cfg: Config) -> str:
    """Point MLflow at the configured tracking store and experiment; return the experiment id.

    A sqlite store is created (schema migrations) by the first process that opens it; two jobs starting together
    on a new workspace would both migrate it and fail, so opening it and creating the experiment hold a file lock
    beside the database."""
    mlflow.set_tracking_uri(cfg.tracking_uri)
    os.environ["MLFLOW_TRACKING_URI"] = cfg.tracking_uri
    if redact(cfg.tracking_uri) != cfg.tracking_uri:  # MLflow prints run links with the URI's credentials in them
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    if cfg.tracking_uri.startswith("sqlite:///"):
        db = Path(cfg.tracking_uri[len("sqlite:///") :])
        with file_lock(db.with_name(db.name + ".lock")):
            exp_id = _experiment(cfg)
    else:
        exp_id = _experiment(cfg)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def _experiment(cfg: Config) -> str:
    """The configured experiment's id, created when missing (another job may create it at the same moment)."""
    exp = mlflow.get_experiment_by_name(cfg.mlflow.experiment)
    if exp is None:
        try:
            return _create_experiment(cfg)
        except MlflowException:
            exp = mlflow.get_experiment_by_name(cfg.mlflow.experiment)
            if exp is None:
                raise
    return exp.experiment_id


def _create_experiment(cfg: Config) -> str:
    if cfg.mlflow.artifact_root is None and cfg.tracking_uri.startswith(("http://", "https://")):
        return mlflow.create_experiment(cfg.mlflow.experiment)  # the server's artifact store (proxied)
    location = cfg.artifact_root
    if "://" not in location:
        Path(location).mkdir(parents=True, exist_ok=True)
        location = Path(location).resolve().as_uri()
    return mlflow.create_experiment(cfg.mlflow.experiment, artifact_location=f"{location}/{cfg.mlflow.experiment}")


@contextmanager
def job_run(cfg: Config, job: str, nested: bool = False) -> Iterator[mlflow.ActiveRun]:
    """One MLflow run per job, tagged with the job, environment and git commit (the lineage of what it writes)."""
    configure_mlflow(cfg)
    with mlflow.start_run(run_name=job, nested=nested) as run:
        mlflow.set_tags({"job": job, "env": cfg.env, "git_commit": git_commit(),
                         "storage.engine": cfg.storage.engine})
        yield run
