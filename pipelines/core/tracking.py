"""MLflow set-up shared by every job: tracking URI and experiment from config, lineage tags on each run."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow

from pipelines.core.config import REPO_ROOT, Config


def git_commit() -> str:
    """The code version for lineage: the git commit of the project, or 'unknown' outside a checkout."""
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def configure_mlflow(cfg: Config) -> str:
    """Point MLflow at the configured tracking store and experiment; return the experiment id."""
    if cfg.tracking_uri.startswith("sqlite:///"):
        Path(cfg.tracking_uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(cfg.tracking_uri)
    os.environ["MLFLOW_TRACKING_URI"] = cfg.tracking_uri
    exp = mlflow.get_experiment_by_name(cfg.mlflow.experiment)
    if exp is None and cfg.mlflow.artifact_root is None and cfg.tracking_uri.startswith(("http://", "https://")):
        exp_id = mlflow.create_experiment(cfg.mlflow.experiment)  # the server's artifact store (proxied)
    elif exp is None:
        location = cfg.artifact_root
        if "://" not in location:
            Path(location).mkdir(parents=True, exist_ok=True)
            location = Path(location).resolve().as_uri()
        exp_id = mlflow.create_experiment(cfg.mlflow.experiment,
                                          artifact_location=f"{location}/{cfg.mlflow.experiment}")
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


@contextmanager
def job_run(cfg: Config, job: str, nested: bool = False) -> Iterator[mlflow.ActiveRun]:
    """One MLflow run per job, tagged with the job, environment and git commit (the lineage of what it writes)."""
    configure_mlflow(cfg)
    with mlflow.start_run(run_name=job, nested=nested) as run:
        mlflow.set_tags({"job": job, "env": cfg.env, "git_commit": git_commit(),
                         "storage.engine": cfg.storage.engine})
        yield run
