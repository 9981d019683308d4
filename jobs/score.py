"""Score with a registered model: models:/<name>@champion by default, --alias or --version to choose another.
With --date (a day, a range or a list) the rows of those dates are scored into gold/<scoring.table>, one
partition per date, and re-running a date replaces exactly that date; without --date the whole source table is
scored and the gold table replaced (the only mode of pipelines whose rows have no date, such as the image and
text flows). An unknown alias or version fails (exit 3) before anything is written. --stream instead scores
new landing files (scoring.stream_path) as they arrive, exactly once, into the same table: --trigger
available-now processes what is there and stops; processing-time keeps polling."""

from __future__ import annotations

import argparse
import sys

from pyspark.sql import SparkSession

from jobs.common import BadInput, job_parser, parse_dates, run_job
from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore
from pipelines.flows import get_flow
from pipelines.stages.score.batch import run_score
from pipelines.stages.score.stream import run_stream


def body(args: argparse.Namespace, cfg: Config, spark: SparkSession, store: DeltaStore) -> int:
    flow = get_flow(cfg)
    if args.stream and args.date:
        raise BadInput("--stream scores new files as they land: no --date")
    if args.stream:
        run_stream(spark, cfg, store, flow, args.trigger, args.timeout, args.alias, args.version)
    else:
        dates = parse_dates(args.date) if args.date else None
        run_score(spark, cfg, store, flow, dates, args.alias, args.version)
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
