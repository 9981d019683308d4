"""Run the whole chain in one driver: land-demo -> ingest -> features -> train -> score -> monitor.

A pipeline whose rows have dates scores every day of its test split and monitors that window; a drift alert is
reported (log, MLflow, gold/drift) and does not fail the chain unless --fail-on-drift is given (the scheduled
`monitor` job exits 4 on it). A pipeline without dates (the image and text flows, a tabular profile split by
hash) scores its whole source table and has no drift window."""

from __future__ import annotations

import argparse
import sys

from pyspark.sql import SparkSession

from jobs.common import job_parser, run_job
from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore
from pipelines.flows import get_flow
from pipelines.stages.run_all import run_all


def body(args: argparse.Namespace, cfg: Config, spark: SparkSession, store: DeltaStore) -> int:
    run_all(spark, cfg, store, get_flow(cfg), args.fail_on_drift)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("run-all", __doc__)
    parser.add_argument("--fail-on-drift", action="store_true", help="exit 4 when monitoring raises a drift alert")
    return run_job(parser, body, argv)


if __name__ == "__main__":
    sys.exit(main())
