"""Score the flights scheduled on a date (or a range) with a registered model: models:/<name>@champion by
default, --alias or --version to choose another. Writes gold/predictions, one partition per date; re-running a
date replaces exactly that date. An unknown alias or version fails (exit 3) before anything is written."""

from __future__ import annotations

import argparse
import sys

from pyspark.sql import SparkSession

from jobs.common import job_parser, parse_dates, run_job
from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore
from pipelines.scoring import run_score


def body(args: argparse.Namespace, cfg: Config, spark: SparkSession, store: DeltaStore) -> int:
    run_score(spark, cfg, store, parse_dates(args.date), args.alias, args.version)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("score", __doc__)
    parser.add_argument("--date", required=True, help="YYYY-MM-DD, a range A:B, or a comma-separated list")
    parser.add_argument("--alias", default=None, help="model alias (default scoring.model_alias: champion)")
    parser.add_argument("--version", type=int, default=None, help="model version (wins over the alias)")
    return run_job(parser, body, argv)


if __name__ == "__main__":
    sys.exit(main())
