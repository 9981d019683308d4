"""The maintain stage: table maintenance for every Delta table of the catalog (or the ones named).

Per table: dead embedded writers' staging and uncommitted files go, small files are compacted (delta-spark:
OPTIMIZE, embedded: delta-rs optimize.compact), then vacuum deletes data files that no version within
`storage.maintain.retention_hours` references and untracked files (a killed writer's) older than that. What a
reader of the latest version sees is unchanged; time travel to versions older than the retention stops working.
Counts go to the log (one line per table) and to one MLflow run.
"""

from __future__ import annotations

from dataclasses import asdict

from pyspark.sql import SparkSession

from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore
from pipelines.core.logs import LOG, stage
from pipelines.core.recorder import Recorder

TOTALS = ("files_compacted", "files_added", "files_removed", "bytes_removed", "staging_removed")


def run_maintain(
    spark: SparkSession, cfg: Config, store: DeltaStore, names: list[str] | None = None
) -> dict[str, dict[str, int]]:
    """Maintain the catalog's tables that exist (or `names`, catalog dataset names); returns counts per table."""
    conf = cfg.storage.maintain
    datasets = [cfg.catalog.get(n) for n in (names or cfg.catalog.names())]  # unknown names: ConfigError
    report: dict[str, dict[str, int]] = {}
    with Recorder.start(cfg, "maintain") as rec:
        rec.params({"retention_hours": conf.retention_hours, "check_retention": conf.check_retention,
                    "tables": [d.name for d in datasets], "storage.engine": store.engine})
        for d in datasets:
            if not store.exists(d.path):
                LOG.info("maintain: no table %s at %s, skipped", d.name, d.path)
                continue
            with stage(f"maintain.{d.name}") as s:
                done = asdict(store.maintain(d.path, conf.retention_hours, conf.check_retention))
                s.add(**done)
            report[d.name] = done
        totals = {k: sum(r[k] for r in report.values()) for k in TOTALS}
        rec.metrics({**totals, "tables": len(report),
                     **{f"{name}.{k}": v for name, r in report.items() for k, v in r.items()}})
        rec.report(report, "maintain_report.json")
        LOG.info("maintain: %d tables %s", len(report), " ".join(f"{k}={v}" for k, v in totals.items()))
    return report
