"""Train the flight-delay model on the silver feature table: N Horovod workers (training.num_workers) in one
Spark barrier stage, fed by Petastorm from the feature-table version pinned by a features run. Evaluates on the
test split against an MLlib baseline, logs an MLflow pyfunc (with the preprocessing model and the decision
threshold) and registers it; alias champion moves to it only when it beats the current champion.
--resume continues from the latest checkpoint of an earlier train run. The image and text flows (--set
pipeline=digits / tweets) train their multiclass CNN / MLP with the same launcher against an MLlib baseline."""

from __future__ import annotations

import argparse
import sys

from pyspark.sql import SparkSession

from jobs.common import BadInput, job_parser, run_job
from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore
from pipelines.flows.dispatch import run_train_for
from pipelines.training.trainer import TrainingInputError


def body(args: argparse.Namespace, cfg: Config, spark: SparkSession, store: DeltaStore) -> int:
    try:
        run_train_for(spark, cfg, store, features_run_id=args.features_run_id, resume=args.resume)
    except TrainingInputError as e:
        raise BadInput(str(e)) from e
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("train", __doc__)
    parser.add_argument("--features-run-id", default=None,
                        help="train on this features run's table version (default: training.data.features_run_id, "
                             "else the latest finished features run)")
    parser.add_argument("--resume", nargs="?", const="latest", default=None, metavar="TRAIN_RUN_ID",
                        help="continue from the latest checkpoint of that train run (default: the newest train run "
                             "with checkpoints)")
    return run_job(parser, body, argv)


if __name__ == "__main__":
    sys.exit(main())
