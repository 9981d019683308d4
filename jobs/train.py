"""Train the pipeline's model on the silver feature table: Keras with N Horovod workers (training.num_workers), or
PyTorch DistributedDataParallel ranks with --set training.framework=pytorch, in one Spark barrier stage, fed from
the feature-table version pinned by a features run. The flow's head (binary, multiclass or regression) sets the
loss, metrics and served outputs. Evaluates on the test split against an
MLlib baseline, logs an MLflow pyfunc (with the preprocessing model) and registers it; alias champion moves to
it only when it beats the current champion. --resume continues from the latest checkpoint of an earlier run.
--search runs training.search.trials Optuna trials first (each one barrier training, judged on validation, a
nested run; pruned by the median rule on the per-epoch validation metric) and then trains and registers the best
configuration the same way."""

from __future__ import annotations

import argparse
import sys

from pyspark.sql import SparkSession

from jobs.common import BadInput, job_parser, run_job
from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore
from pipelines.flows import get_flow
from pipelines.stages.train import TrainingInputError, run_search, run_train


def body(args: argparse.Namespace, cfg: Config, spark: SparkSession, store: DeltaStore) -> int:
    if args.search and args.resume:
        raise BadInput("--search starts new trainings; it cannot be combined with --resume")
    try:
        if args.search:
            run_search(spark, cfg, store, get_flow(cfg), features_run_id=args.features_run_id)
        else:
            run_train(spark, cfg, store, get_flow(cfg), features_run_id=args.features_run_id, resume=args.resume)
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
    parser.add_argument("--search", action="store_true",
                        help="hyperparameter search (training.search: trials, seed, space, pruner) with Optuna, then "
                             "retrain the best configuration and register it through the champion rule")
    return run_job(parser, body, argv)


if __name__ == "__main__":
    sys.exit(main())
