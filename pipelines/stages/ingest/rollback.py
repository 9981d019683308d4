"""Rollback of dead ingest runs: rows they committed without their ingest log entry are deleted, on evidence
only (the lease or ingest.roll_back names them, the log proves them unlogged, MLflow marks them KILLED)."""

from __future__ import annotations

import socket

import pandas as pd

from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore
from pipelines.core.errors import BadInput
from pipelines.core.logs import LOG


def _run_ids(store: DeltaStore, path: str, column: str) -> set[str]:
    if not store.exists(path):
        return set()
    table = store.read(path)
    if column not in table.columns:
        return set()
    return {r[0] for r in table.select(column).distinct().collect() if r[0] is not None}


def rollback_unlogged(cfg: Config, store: DeltaStore, run_id: str, dead: list[str], log: pd.DataFrame | None
                      ) -> dict[str, int]:
    """Delete the bronze and quarantine rows of dead ingest runs that never wrote their ingest log entry, and the
    data files those runs wrote but never committed.

    An ingest run commits bronze (and quarantine) first and the ingest log last; a driver that dies in between
    leaves rows whose files the log does not know, so the next run would ingest them again. A driver killed while
    a write ran leaves that write's files in the table folder, referenced by no version; holding the lease, this
    run knows their writer is gone (see DeltaStore.remove_dead_files). Rows are deleted only
    on evidence: `dead` are the runs the ingest lease proves stopped (a dead holder, or one that failed), or that a
    person named in ingest.roll_back; the log, which must be readable, proves they are unlogged; and the tracking
    server must be reachable to mark them KILLED. Rows of any other run (the streaming job's quarantine rows, a
    run the lease does not account for) are never deleted: bronze rows that nothing accounts for are an error.
    """
    logged = set(log["run_id"]) if log is not None else set()
    orphans = sorted(r for r in dict.fromkeys(dead) if r not in logged and r != run_id)
    bronze = [cfg.catalog.path(s.table) for s in cfg.ingest.sources.values()]
    bronze_runs = {path: _run_ids(store, path, "_run_id") for path in dict.fromkeys(bronze)}
    unexplained = {path: sorted(runs - logged - set(orphans) - {run_id}) for path, runs in bronze_runs.items()}
    unexplained = {p: r for p, r in unexplained.items() if r}
    if unexplained:
        where = "; ".join(f"{p}: {r}" for p, r in unexplained.items())
        missing = " The ingest log table is missing." if log is None else ""
        raise BadInput(f"bronze holds rows of ingest run(s) that neither the ingest log "
                       f"{cfg.catalog.path('ingest_log')} nor the ingest lease accounts for ({where}).{missing} "
                       "Nothing was deleted. If the log was lost, restore it; if those runs are known to be dead "
                       "and unlogged, name them in ingest.roll_back to roll their rows back.")
    if not orphans:
        return {}
    _close_dead_runs(cfg, orphans)
    tables = {path: "_run_id" for path in bronze_runs}
    tables |= {cfg.catalog.path(t): "run_id" for t in ("quarantine_rows", "quarantine_files")}
    rolled: dict[str, int] = {}
    for path, column in tables.items():
        n = store.delete_where(path, column, orphans, {"run_id": run_id, "rollback_of": ",".join(orphans)})
        if n:
            LOG.warning("ingest: rolled back %d rows of dead unlogged run(s) %s from %s", n, ", ".join(orphans),
                        path)
            rolled[path] = n
    # After the deletes: a compaction that read the dead runs' committed rows can no longer commit.
    for path, column in (tables | {cfg.catalog.path("ingest_log"): "run_id"}).items():
        files, size = store.remove_dead_files(path, column, orphans)
        if files:
            LOG.warning("ingest: removed %d files (%d bytes) that dead run(s) %s wrote to %s and never committed",
                        files, size, ", ".join(orphans), path)
    return rolled


def _tracking_unreachable(uri: str) -> str | None:
    """Why an http(s) tracking server cannot be reached (a quick TCP connect), else None."""
    from urllib.parse import urlparse

    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", port), timeout=10):
            return None
    except OSError as e:
        return str(e)


def _close_dead_runs(cfg: Config, runs: list[str]) -> None:
    """Mark dead ingest runs that MLflow still shows as RUNNING as KILLED, before their rows are rolled back; a
    tracking server that cannot answer is BadInput, so nothing is deleted on missing evidence."""
    for r in runs:
        if _mlflow_status(cfg, r) == "RUNNING":
            from mlflow.tracking import MlflowClient

            MlflowClient(cfg.tracking_uri).set_terminated(r, "KILLED")
            LOG.warning("ingest: marked dead run %s KILLED in MLflow", r)


def _mlflow_status(cfg: Config, run_id: str) -> str | None:
    """The MLflow status of an ingest run (None when it is no run of this tracking store). A tracking store that
    cannot answer is BadInput naming it: an unknown status is never taken for a missing run."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    def refuse(why: str) -> BadInput:
        return BadInput(f"the MLflow tracking server {cfg.tracking_uri} is unreachable ({why}): ingest will not "
                        f"roll back the rows of dead run {run_id} without closing that run there, so nothing was "
                        "deleted. Start the server (or fix mlflow.tracking_uri) and run ingest again.")

    why = _tracking_unreachable(cfg.tracking_uri)
    if why:
        raise refuse(why)
    try:
        return MlflowClient(cfg.tracking_uri).get_run(run_id).info.status
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise refuse(str(e).splitlines()[0][:300]) from e
    except Exception as e:
        raise refuse(f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}") from e
