"""Benchmark (not a test): the features job against a plain read-bronze -> write-Parquet pass over the same rows.

For each scale k (default 1, 2, 4) a scratch workspace gets bronze tables with the flights rows replicated k times
by union (copy i shifts `flight` by i * 100000, so natural keys stay unique and nothing is deduplicated away) and
the dimension tables copied as they are (set-up, not timed). Then, in one Spark session, through the harness (a
warm-up of every side, then the sides interleaved, 3 timed runs each):
  baseline@kx  read bronze flights -> write Parquet (no transformation)
  features@kx  run_features: read, clean, joins, split, fit the PipelineModel, write the silver table, MLflow run
with the ratios features / baseline per scale and each side's growth from the first scale, and the job's stage
times (its own stage log lines), so the report shows where the time goes. Needs the flights bronze tables in the
default workspace (the README's run-all).

    .venv/bin/python -m tests.benchmarks.bench_features [--scales 1,4] [--runs 3] [--stats]
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.core.config import Config, load_config
from pipelines.core.delta import DeltaStore
from pipelines.core.logs import LOG, setup_logging
from pipelines.core.session import get_spark
from pipelines.flows import get_flow
from pipelines.stages.features import run_features
from tests.benchmarks.harness import Report, measure

FLIGHT_SHIFT = 100_000
STAGE = re.compile(r"stage=(features\.\w+) .*duration=([0-9.]+)s")


def replicate(flights: DataFrame, k: int) -> DataFrame:
    """k copies of the flights rows; copy i has flight + i * FLIGHT_SHIFT so the natural key stays unique."""
    out = flights
    for i in range(1, k):
        out = out.unionByName(flights.withColumn("flight", F.col("flight") + F.lit(i * FLIGHT_SHIFT)))
    return out


def build_workspace(store: DeltaStore, src: Config, ws: Path, k: int, stats: bool) -> Config:
    """Scratch workspace with bronze flights x k and the dimension tables; returns its config."""
    cfg = load_config("local", [f"storage.workspace={ws}", f"features.stats.enabled={str(stats).lower()}"])
    fc = src.features
    flights = store.read(src.catalog.path(fc.source_table))
    store.write(replicate(flights, k), cfg.catalog.path(fc.source_table), "overwrite",
                src.ingest.sources[fc.source_table].partition_by)
    for j in src.flow.joins:
        store.write(store.read(src.catalog.path(j.table)).coalesce(1), cfg.catalog.path(j.table),
                    "overwrite")
    return cfg


def baseline(store: DeltaStore, cfg: Config, out: Path) -> dict[str, float]:
    """Read bronze flights -> write Parquet, nothing else; the rows written, counted from the files' footers."""
    store.read(cfg.catalog.path(cfg.features.source_table)).write.mode("overwrite").parquet(str(out))
    return {"rows": float(sum(pq.ParquetFile(f).metadata.num_rows for f in out.glob("*.parquet")))}


class StageTimes(logging.Handler):
    """Collects `stage=NAME ... duration=Ss` log lines of the features job (pipelines.core.logs.stage)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seconds: dict[str, list[float]] = {}
        self.current: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        m = STAGE.search(record.getMessage())
        if m:
            self.current[m[1]] = self.current.get(m[1], 0.0) + float(m[2])

    def close_run(self, side: str) -> None:
        for name, secs in self.current.items():
            self.seconds.setdefault(f"{side} {name}", []).append(secs)
        self.current = {}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scales", default="1,4", help="replication factors, comma separated")
    p.add_argument("--runs", type=int, default=3, help="timed runs per side after one warm-up")
    p.add_argument("--stats", action="store_true", help="include the training-split statistics in the job")
    p.add_argument("--scratch", default=None, help="folder for the scratch workspaces (default: a temp folder)")
    args = p.parse_args(argv)
    setup_logging("WARNING")
    src = load_config("local")
    spark = get_spark(src, "bench-features")
    store = DeltaStore(spark, src.storage.engine, src.storage.max_records_per_file)
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="bench-features-"))
    scales = [int(s) for s in args.scales.split(",")]
    stages = StageTimes()
    LOG.addHandler(stages)
    LOG.setLevel(logging.INFO)
    sides = {}
    try:
        for k in scales:
            cfg = build_workspace(store, src, scratch / f"x{k}", k, args.stats)

            def base(cfg: Config = cfg, k: int = k) -> dict[str, float]:
                return baseline(store, cfg, scratch / f"x{k}" / "baseline.parquet")

            def job(cfg: Config = cfg, k: int = k) -> dict[str, float]:
                res = run_features(spark, cfg, store, get_flow(cfg))
                stages.close_run(f"features@{k}x")
                return {"rows": float(res.counts["rows_out"])}

            sides[f"baseline@{k}x"], sides[f"features@{k}x"] = base, job
        runs = measure(sides, runs=args.runs)
    finally:
        LOG.removeHandler(stages)
        if not args.scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    for r in runs:
        if r.side.startswith("features") and r.counters["rows"] != next(
                b.counters["rows"] for b in runs if b.side == r.side.replace("features", "baseline")):
            raise RuntimeError(f"{r.side}: features wrote {r.counters['rows']:.0f} rows, baseline another count")
    notes = [f"master {spark.sparkContext.master}, shuffle partitions {spark.conf.get('spark.sql.shuffle.partitions')}"
             f", AQE {spark.conf.get('spark.sql.adaptive.enabled')}, storage engine {store.engine}, "
             f"stats {'on' if args.stats else 'off'}; the features side includes its MLflow run and the saved model",
             "features job stage seconds, median of the timed runs (warm-up excluded):"]
    for name, secs in stages.seconds.items():
        timed = secs[1:]
        notes.append(f"  {name:<32} {statistics.median(timed):6.1f}")
    ratios = [(f"features@{k}x", f"baseline@{k}x", None) for k in scales]
    ratios += [(f"features@{k}x", f"features@{scales[0]}x", None) for k in scales[1:]]
    ratios += [(f"baseline@{k}x", f"baseline@{scales[0]}x", None) for k in scales[1:]]
    print(Report("features", runs, notes).write(ratios).read_text())
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
