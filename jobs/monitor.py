"""Monitor a scored date (or range) against the model's training data: PSI and KS per input feature, the shift
of the prediction distribution, and the realized metric where labels have arrived. Writes gold/drift, MLflow
metrics and plots; exits 4 when a threshold in conf (monitor.*) is crossed."""

from __future__ import annotations

import argparse
import sys

from pyspark.sql import SparkSession

from jobs.common import job_parser, parse_dates, run_job
from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore
from pipelines.flows import get_flow
from pipelines.stages.monitor.run import run_monitor


def body(args: argparse.Namespace, cfg: Config, spark: SparkSession, store: DeltaStore) -> int:
    run_monitor(spark, cfg, store, get_flow(cfg), parse_dates(args.date), args.alias, args.version)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("monitor", __doc__)
    parser.add_argument("--date", required=True, help="YYYY-MM-DD, a range A:B, or a comma-separated list")
    parser.add_argument("--alias", default=None, help="model alias (default scoring.model_alias: champion)")
    parser.add_argument("--version", type=int, default=None, help="model version (wins over the alias)")
    return run_job(parser, body, argv)


if __name__ == "__main__":
    sys.exit(main())
