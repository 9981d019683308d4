"""Ingest new landing files into bronze Delta tables with the schemas declared in conf/base/ingest.yaml.
Files ingested before are skipped; malformed rows and unreadable files go to quarantine with their reason.
The run is recorded in MLflow (files, rows_in, rows_ok, rows_quarantined, table versions)."""

from __future__ import annotations

import argparse
import sys

from pyspark.sql import SparkSession

from jobs.common import job_parser, run_job
from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore
from pipelines.stages.ingest.run import run_ingest


def body(args: argparse.Namespace, cfg: Config, spark: SparkSession, store: DeltaStore) -> int:
    run_ingest(spark, cfg, store, args.sources)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("ingest", __doc__)
    parser.add_argument("--sources", nargs="+", default=None, help="only these sources (default: all)")
    return run_job(parser, body, argv)


if __name__ == "__main__":
    sys.exit(main())
