"""Maintain the pipeline's Delta tables: compact small files, vacuum files older than storage.maintain.retention_hours
that no version needs (and a killed writer's leftovers), remove dead writers' staging. Readers of the latest version
see the same rows; time travel to versions older than the retention stops working."""

from __future__ import annotations

import argparse
import sys

from pyspark.sql import SparkSession

from jobs.common import job_parser, run_job
from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore
from pipelines.stages.maintain import run_maintain


def body(args: argparse.Namespace, cfg: Config, spark: SparkSession, store: DeltaStore) -> int:
    run_maintain(spark, cfg, store, args.tables)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("maintain", __doc__)
    parser.add_argument("--tables", nargs="+", default=None, metavar="NAME",
                        help="catalog datasets to maintain (default: every one that exists), e.g. features")
    return run_job(parser, body, argv)


if __name__ == "__main__":
    sys.exit(main())
