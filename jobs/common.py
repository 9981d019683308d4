"""What every job shares: arguments, config loading, the session, exit codes. Jobs stay thin on top of it.

A job started by spark-submit.sh gets its --set overrides (and, in a YARN container, the environment its config
reads) from the private job file PIPELINE_JOB_FILE names, not from its command line. Every failure is printed with
secrets masked, an unexpected one as its masked traceback (exit code 1)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

from pyspark.sql import SparkSession

from pipelines.core.config import ENVS, Config, ConfigError, load_config
from pipelines.core.delta import DeltaStore
from pipelines.core.errors import BadInput, DriftAlert, MissingModel
from pipelines.core.handoff import read_job_file
from pipelines.core.logs import LOG, log_to_file, redacted_traceback, setup_logging
from pipelines.core.session import get_spark

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_MISSING_MODEL = 3
EXIT_DRIFT = 4


def job_parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """Parser with the options every job takes: --env, --set key=value, --conf-dir."""
    p = argparse.ArgumentParser(
        prog=f"spark-submit.sh {name}", description=(doc or "").strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit codes: 0 ok, 1 failed, 2 bad input or config, 3 missing model, 4 drift alert",
    )
    p.add_argument("--env", default="local", choices=ENVS, help="config environment (conf/<env>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set demo.fraction=0.05 (repeatable)")
    p.add_argument("--conf-dir", default=None, help="config folder (default: the project's conf/)")
    return p


Body = Callable[[argparse.Namespace, Config, SparkSession, DeltaStore], int | None]


def run_job(parser: argparse.ArgumentParser, body: Body, argv: list[str] | None = None) -> int:
    """Parse arguments, load config, get the session and store, run `body`; map failures to exit codes."""
    args = parser.parse_args(argv)
    setup_logging()
    overrides, env = read_job_file()
    os.environ.update(env)
    try:
        cfg = load_config(args.env, [*overrides, *args.overrides], args.conf_dir)
    except ConfigError as e:
        LOG.error("%s", e)
        return EXIT_BAD_INPUT
    job = parser.prog.split()[-1]
    if "://" not in cfg.workspace:  # a local workspace keeps the job's debug log (noise included) beside its data
        LOG.info("debug log: %s", log_to_file(Path(cfg.workspace) / "logs", job))
    try:
        spark = get_spark(cfg, job)
        store = DeltaStore(spark, cfg.storage.engine, cfg.storage.max_records_per_file)
        return body(args, cfg, spark, store) or EXIT_OK
    except (BadInput, ConfigError, FileNotFoundError) as e:
        LOG.error("bad input: %s", e)
        return EXIT_BAD_INPUT
    except MissingModel as e:
        LOG.error("missing model: %s", e)
        return EXIT_MISSING_MODEL
    except DriftAlert as e:
        LOG.error("drift alert: %s", e)
        return EXIT_DRIFT
    except Exception as e:  # what no job expects: its traceback, masked (MLflow's errors carry the tracking URL)
        LOG.error("failed: %s", redacted_traceback(e).rstrip())
        return EXIT_FAILED


def parse_dates(text: str) -> list[date]:
    """YYYY-MM-DD, YYYY-MM-DD:YYYY-MM-DD (inclusive range) or a comma-separated list of either."""
    out: list[date] = []
    try:
        for part in text.split(","):
            start, _, end = part.strip().partition(":")
            first, last = date.fromisoformat(start), date.fromisoformat(end or start)
            if last < first:
                raise BadInput(f"--date {part}: the range ends before it starts")
            out += [first + timedelta(days=i) for i in range((last - first).days + 1)]
    except ValueError as e:
        raise BadInput(f"--date {text!r}: {e}") from None
    return sorted(set(out))


__all__ = ["BadInput", "DriftAlert", "MissingModel", "job_parser", "parse_dates", "run_job"]
