"""Spark's History Server on the workspace's event logs (<workspace>/spark-events), on 127.0.0.1: the UI of
finished jobs after their driver has gone. Runs in the foreground until Ctrl-C. Not a Spark application:
spark-submit.sh runs it in its own process, with no spark-submit."""

from __future__ import annotations

import argparse
import sys

from pipelines.core.config import ENVS, ConfigError, load_config
from pipelines.stages.history import DEFAULT_PORT, run_history


def main(argv: list[str] | None = None) -> int:
    """Parse --env/--set/--conf-dir/--port, then replace this process with the History Server."""
    p = argparse.ArgumentParser(prog="spark-submit.sh history", description=(__doc__ or "").strip())
    p.add_argument("--env", default="local", choices=ENVS)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--conf-dir", default=None)
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"UI port (default {DEFAULT_PORT})")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.env, args.overrides, args.conf_dir)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    run_history(cfg, args.port)


if __name__ == "__main__":
    sys.exit(main())
