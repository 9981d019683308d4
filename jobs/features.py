"""Build the silver feature table of the pipeline's flow from bronze: prepare the rows (clean, join, label,
split), fit the preprocessing PipelineModel on the train split, write the table (a new version per run) and
record the bronze versions used, the model, counts and descriptive statistics in one MLflow run.
Pin inputs with --set features.bronze_versions.<table>=N; the flow is described in the profile's conf
(conf/pipelines/<pipeline>/)."""

from __future__ import annotations

import argparse
import sys

from pyspark.sql import SparkSession

from jobs.common import job_parser, run_job
from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore
from pipelines.flows import get_flow
from pipelines.stages.features import run_features


def body(args: argparse.Namespace, cfg: Config, spark: SparkSession, store: DeltaStore) -> int:
    run_features(spark, cfg, store, get_flow(cfg))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_job(job_parser("features", __doc__), body, argv)


if __name__ == "__main__":
    sys.exit(main())
