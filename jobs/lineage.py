"""Lineage of a gold prediction row (--key col=value,... --date), a registered model version (--model-version or
--alias, --model for another name), a table version (--table NAME --table-version N) or a landing file (--file):
the chain down to its inputs (model version and training run, feature table version and preprocessing, features
run, bronze versions, ingest runs, landing files with size and sha256, the git commit of every job) and up to its
consumers (features runs, model versions, predictions). Prints a text tree, writes a PNG (--png, default
<workspace>/lineage/<start>.png) and, with --json PATH (- for stdout), the graph as JSON. Anything unknown: exit 2."""

from __future__ import annotations

import argparse
import re
import sys
from datetime import date

from pyspark.sql import SparkSession

from jobs.common import BadInput, job_parser, run_job
from pipelines.core import files
from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore
from pipelines.core.logs import LOG
from pipelines.stages.lineage.graph import lineage, parse_key
from pipelines.stages.lineage.render import summary, to_json, to_png, to_text


def body(args: argparse.Namespace, cfg: Config, spark: SparkSession, store: DeltaStore) -> int:
    try:
        day = date.fromisoformat(args.date) if args.date else None
    except ValueError as e:
        raise BadInput(f"--date {args.date!r}: {e}") from None
    graph = lineage(cfg, store, key=parse_key(args.key) if args.key is not None else None, day=day,
                    model=args.model, version=args.model_version, alias=args.alias, table=args.table,
                    table_version=args.table_version, file=args.file)
    png = args.png or files.join(cfg.workspace, "lineage", re.sub(r"[^A-Za-z0-9_.=-]+", "_", graph.start) + ".png")
    to_png(graph, png)
    if args.json == "-":
        print(to_json(graph))
    else:
        print(to_text(graph))
        if args.json:
            with open(args.json, "w") as f:
                f.write(to_json(graph))
    LOG.info("lineage: %s, png %s", summary(graph), png)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = job_parser("lineage", __doc__)
    parser.add_argument("--key", help="a gold row's natural key, e.g. year=2013,month=12,day=3,carrier=UA,...")
    parser.add_argument("--date", help="the gold row's date (flow.date_name), YYYY-MM-DD")
    parser.add_argument("--model", default=None, help="registered model name (default mlflow.registered_model)")
    parser.add_argument("--model-version", default=None, help="registered model version")
    parser.add_argument("--alias", default=None, help="registered model alias, e.g. champion")
    parser.add_argument("--table", default=None, help="catalog table name, e.g. flights, features, predictions")
    parser.add_argument("--table-version", type=int, default=None, help="the table's Delta version")
    parser.add_argument("--file", default=None, help="a landing file (name or URI in the ingest log)")
    parser.add_argument("--png", default=None, help="where to write the picture")
    parser.add_argument("--json", default=None, help="write the graph as JSON to this path (- : stdout, no text)")
    return run_job(parser, body, argv)


if __name__ == "__main__":
    sys.exit(main())
