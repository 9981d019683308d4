"""The ingest job: one run over the configured sources under the ingest lease (rollback of dead runs first, the
ingest log last), recorded as one MLflow run through the Recorder."""

from __future__ import annotations

from dataclasses import asdict

from pyspark.sql import SparkSession

from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore
from pipelines.core.failpoints import pause
from pipelines.core.files import join
from pipelines.core.lease import Lease
from pipelines.core.logs import redact_config
from pipelines.core.recorder import Recorder
from pipelines.stages.ingest.deliveries import SourceResult, ingested_files, list_landed, read_log, write_ingest_log
from pipelines.stages.ingest.rollback import rollback_unlogged
from pipelines.stages.ingest.sources import ingest_source


def ingest(spark: SparkSession, cfg: Config, store: DeltaStore, run_id: str,
           sources: list[str] | None = None) -> list[SourceResult]:
    """Ingest the named sources, else ingest.select, else every configured source; return per-source results.

    The run holds the workspace's ingest lease throughout (waiting for a live holder, taking over a dead one), so
    concurrent runs are serialized and the later one finds nothing new. Every commit it makes (bronze, quarantine,
    the log, rollback deletes) is fenced by the lease: checked right before it commits, and the run's Spark jobs
    are cancelled the moment the lease is lost, so a holder judged dead commits nothing more. Rows left by an
    earlier run that died or failed before writing its ingest log are rolled back first."""
    sources = sources or cfg.ingest.select or None
    unknown = sorted(set(sources or []) - set(cfg.ingest.sources))
    if unknown:
        raise ValueError(f"unknown sources {unknown}; configured: {sorted(cfg.ingest.sources)}")
    lc = cfg.ingest.lease
    jobs = f"ingest-{run_id}"  # this run's Spark jobs, to cancel when the lease is lost
    lease = Lease(join(cfg.workspace, "leases", "ingest"), run_id, lc.expiry_s, lc.heartbeat_s, lc.wait_s,
                  lc.poll_s, on_lost=lambda _: spark.sparkContext.cancelJobsWithTag(jobs))
    dead = [*lease.acquire(), *cfg.ingest.roll_back]
    store = store.fenced(lease.check)
    spark.sparkContext.addJobTag(jobs)
    ok = False
    try:
        log_path = cfg.catalog.path("ingest_log")
        log = read_log(store, log_path)
        rollback_unlogged(cfg, store, run_id, dead, log)
        seen = ingested_files(log)
        chosen = {name: src for name, src in cfg.ingest.sources.items() if not sources or name in sources}
        landed = list_landed(cfg, chosen, seen)
        results = [ingest_source(spark, cfg, store, name, src, run_id, seen, landed[name])
                   for name, src in chosen.items()]
        lease.check()
        pause("ingest.before_log")
        write_ingest_log(spark, cfg, store, run_id, results)
        ok = True
        return results
    finally:
        spark.sparkContext.removeJobTag(jobs)
        lease.release(ok, dead)


def summary(results: list[SourceResult]) -> dict:
    """JSON-friendly per-source summary for logs and MLflow."""
    return {r.source: {"rows_in": r.rows_in, "rows_ok": r.rows_ok, "rows_quarantined": r.rows_quarantined,
                       "files_new": len(r.files), "files_skipped": r.skipped_files,
                       "files_ignored": r.ignored_files, "files_deferred": len(r.deferred),
                       "files_vanished": len(r.vanished),
                       "files_quarantined": r.files_quarantined, "table_version": r.table_version,
                       "files": [asdict(f) for f in r.files], "deferred": r.deferred,
                       "vanished": [asdict(f) for f in r.vanished]} for r in results}


def ingest_record(cfg: Config, results: list[SourceResult], engine: str) -> tuple[dict[str, str], dict]:
    """The params and the file report an ingest run records in MLflow, masked (a landing URI's password)."""
    params = {"sources": ",".join(r.source for r in results), "storage.engine": engine,
              "landing": cfg.catalog.landing}
    return redact_config(params), redact_config(summary(results))


def run_ingest(spark: SparkSession, cfg: Config, store: DeltaStore, sources: list[str] | None = None
               ) -> list[SourceResult]:
    """ingest() recorded as one MLflow run: parameters, counts per source, table versions, the file report."""
    with Recorder.start(cfg, "ingest") as recorder:
        results = ingest(spark, cfg, store, recorder.run_id, sources)
        params, report = ingest_record(cfg, results, store.engine)
        recorder.params(params)
        for r in results:
            recorder.metrics({f"{r.source}.rows_in": r.rows_in, f"{r.source}.rows_ok": r.rows_ok,
                              f"{r.source}.rows_quarantined": r.rows_quarantined,
                              f"{r.source}.files_new": len(r.files),
                              f"{r.source}.files_quarantined": r.files_quarantined,
                              f"{r.source}.files_deferred": len(r.deferred),
                              f"{r.source}.files_vanished": len(r.vanished)})
            version = store.version(cfg.catalog.path(cfg.ingest.sources[r.source].table))
            recorder.tags({f"table_version.bronze.{r.source}": "none" if version is None else version})
        recorder.metrics({"rows_in": sum(r.rows_in for r in results),
                          "rows_ok": sum(r.rows_ok for r in results),
                          "rows_quarantined": sum(r.rows_quarantined for r in results)})
        recorder.report(report, "ingest_report.json")
    return results
