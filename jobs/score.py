"""Score the flights scheduled on a date (or a range) with a registered model: models:/<name>@champion by
default, --alias or --version to choose another. Writes gold/predictions, one partition per date; re-running a
date replaces exactly that date. An unknown alias or version fails (exit 3) before anything is written.
--stream instead scores new landing files (scoring.stream_path) as they arrive, exactly once, into the same
table: --trigger available-now processes what is there and stops; processing-time keeps polling.
The image and text flows (--set pipeline=digits / tweets) score their bronze table (image bytes, texts) into
gold/<scoring.table>, replacing it."""

from __future__ import annotations

import argparse
import sys

from pyspark.sql import SparkSession

from jobs.common import BadInput, job_parser, parse_dates, run_job
from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore
from pipelines.flows.dispatch import run_score_for
from pipelines.scoring import run_score
from pipelines.streaming import run_stream


def body(args: argparse.Namespace, cfg: Config, spark: SparkSession, store: DeltaStore) -> int:
    if cfg.flow.kind != "tabular":
        if args.stream or args.date:
            raise BadInput(f"the {cfg.flow.kind} flow scores its whole bronze table: no --date or --stream")
        run_score_for(spark, cfg, store, args.alias, args.version)
    elif args.stream:
        run_stream(spark, cfg, store, args.trigger, args.timeout, args.alias, args.version)
    elif not args.date:
        raise BadInput("--date is required (or --stream)")
    else:
        run_score(spark, cfg, store, parse_dates(args.date), args.alias, args.version)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("score", __doc__)
    parser.add_argument("--date", help="YYYY-MM-DD, a range A:B, or a comma-separated list")
    parser.add_argument("--alias", default=None, help="model alias (default scoring.model_alias: champion)")
    parser.add_argument("--version", type=int, default=None, help="model version (wins over the alias)")
    parser.add_argument("--stream", action="store_true", help="structured streaming over new landing files")
    parser.add_argument("--trigger", choices=["available-now", "processing-time"], default="available-now")
    parser.add_argument("--timeout", type=float, default=None, help="stop a processing-time stream after N seconds")
    return run_job(parser, body, argv)


if __name__ == "__main__":
    sys.exit(main())
