"""Run the whole chain in one driver: land-demo -> ingest (later stages join as they are built)."""

from __future__ import annotations

import argparse
import sys

from pyspark.sql import SparkSession

from jobs.common import job_parser, run_job
from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore
from pipelines.demo import land_demo
from pipelines.ingest import run_ingest


def body(args: argparse.Namespace, cfg: Config, spark: SparkSession, store: DeltaStore) -> int:
    land_demo(cfg.landing, cfg.demo.fraction, cfg.demo.seed)
    run_ingest(spark, cfg, store)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_job(job_parser("run-all", __doc__), body, argv)


if __name__ == "__main__":
    sys.exit(main())
