"""Build the silver feature table from bronze: clean, join weather/planes/airlines, split by date, fit the
preprocessing PipelineModel on the train split, write the table (a new version per run) and record the bronze
versions used, the model, counts and descriptive statistics in one MLflow run.
Pin inputs with --set features.bronze_versions.flights=N; the feature set is described in conf/base/features.yaml.
With --set pipeline=digits (or tweets) the image (or text) flow builds its feature table instead."""

from __future__ import annotations

import argparse
import sys

from pyspark.sql import SparkSession

from jobs.common import job_parser, run_job
from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore
from pipelines.flows.dispatch import run_features_for


def body(args: argparse.Namespace, cfg: Config, spark: SparkSession, store: DeltaStore) -> int:
    run_features_for(spark, cfg, store)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_job(job_parser("features", __doc__), body, argv)


if __name__ == "__main__":
    sys.exit(main())
