"""Benchmark (not a test): the features job against a plain read-bronze -> write-Parquet pass over the same rows.

For each scale k (default 1, 2, 4) a scratch workspace gets bronze tables with the flights rows replicated k times
by union (copy i shifts `flight` by i * 100000, so natural keys stay unique and nothing is deduplicated away) and
the dimension tables copied as they are. Then, in one Spark session:
  baseline  read bronze flights -> write Parquet (no transformation)
  features  run_features: read, clean, joins, split, fit the PipelineModel, write the silver table, MLflow run
and the report gives both times and their ratio per scale. Table set-up is not timed; one untimed run of both at
the first scale warms the JVM and MLflow first; the baseline is the best of 3 (it is short), the job runs once.

    .venv/bin/python benchmarks/bench_features.py [--scales 1,2,4] [--stats] [--out benchmarks/results/features.txt]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.core.config import Config, load_config
from pipelines.core.delta import DeltaStore
from pipelines.core.logs import setup_logging
from pipelines.core.session import get_spark
from pipelines.flows import get_flow
from pipelines.stages.featurize import run_features

FLIGHT_SHIFT = 100_000


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


def baseline(spark: SparkSession, store: DeltaStore, cfg: Config, out: Path) -> tuple[float, int]:
    """Seconds for read bronze flights -> write Parquet, and the rows written."""
    start = time.perf_counter()
    store.read(cfg.catalog.path(cfg.features.source_table)).write.mode("overwrite").parquet(str(out))
    seconds = time.perf_counter() - start
    return seconds, spark.read.parquet(str(out)).count()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scales", default="1,2,4", help="replication factors, comma separated")
    p.add_argument("--stats", action="store_true", help="include the training-split statistics in the job")
    p.add_argument("--out", default="benchmarks/results/features.txt", help="report file")
    p.add_argument("--scratch", default=None, help="folder for the scratch workspaces (default: a temp folder)")
    args = p.parse_args(argv)
    setup_logging("WARNING")
    src = load_config("local")
    spark = get_spark(src, "bench-features")
    store = DeltaStore(spark, src.storage.engine, src.storage.max_records_per_file)
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="bench-features-"))
    scales = [int(s) for s in args.scales.split(",")]
    load_before = os.getloadavg()
    rows = []
    try:
        store.read(src.catalog.path(src.features.source_table)).count()  # warm the JVM and the file cache
        for k in scales:
            ws = scratch / f"x{k}"
            cfg = build_workspace(store, src, ws, k, args.stats)
            if k == scales[0]:  # untimed warm-up: JIT, class loading, MLflow store set-up
                baseline(spark, store, cfg, ws / "baseline.parquet")
                run_features(spark, cfg, store, get_flow(cfg))
            base_s, n = min(baseline(spark, store, cfg, ws / "baseline.parquet") for _ in range(3))
            start = time.perf_counter()
            res = run_features(spark, cfg, store, get_flow(cfg))
            feat_s = time.perf_counter() - start
            if res.counts["rows_out"] != n:
                raise RuntimeError(f"scale {k}: features wrote {res.counts['rows_out']} rows, baseline {n}")
            rows.append((k, n, base_s, feat_s))
            print(f"x{k}: rows={n} baseline={base_s:.1f}s features={feat_s:.1f}s ratio={feat_s / base_s:.1f}",
                  flush=True)
            shutil.rmtree(ws, ignore_errors=True)
    finally:
        if not args.scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    load_after = os.getloadavg()
    lines = [
        "features job vs plain read-bronze -> write-Parquet (same rows, same session)",
        f"machine: {os.cpu_count()} cores, master {spark.sparkContext.master}, "
        f"shuffle partitions {spark.conf.get('spark.sql.shuffle.partitions')}, storage engine {store.engine}, "
        f"stats {'on' if args.stats else 'off'}",
        f"load average (1 min) before {load_before[0]:.1f}, after {load_after[0]:.1f} (shared machine)",
        "",
        f"{'scale':>5} {'rows':>10} {'baseline_s':>11} {'features_s':>11} {'ratio':>6} {'features_rows/s':>16}",
    ]
    for k, n, b, f in rows:
        lines.append(f"{k:>4}x {n:>10} {b:>11.1f} {f:>11.1f} {f / b:>6.1f} {n / f:>16,.0f}")
    if len(rows) > 1:
        k0, _, b0, f0 = rows[0]
        growth = ", ".join(f"x{k}: baseline {b / b0:.2f}, features {f / f0:.2f}" for k, _, b, f in rows[1:])
        lines += ["", f"time growth relative to x{k0}: {growth}"]
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
