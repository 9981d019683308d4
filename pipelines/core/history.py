"""Spark's History Server on the event logs a workspace keeps (<workspace>/spark-events), bound to 127.0.0.1: the
UI of finished jobs after their driver has gone. `./spark-submit.sh history [--port 18080] [--set key=value ...]`
runs it in the foreground (Ctrl-C stops it); nothing is written into the virtual environment (the sbin/ scripts
would put their pid and log files there)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipelines.core import files
from pipelines.core.config import ENVS, REPO_ROOT, ConfigError, load_config
from pipelines.core.session import event_log_dir

HISTORY_SERVER = "org.apache.spark.deploy.history.HistoryServer"
DEFAULT_PORT = 18080


def history_command(log_dir: str, port: int) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run the History Server on `log_dir` (a URI), on 127.0.0.1:`port`."""
    from pyspark.find_spark_home import _find_spark_home

    home = _find_spark_home()
    opts = [f"-Dspark.history.fs.logDirectory={log_dir}", f"-Dspark.history.ui.port={port}",
            f"-Dlog4j2.configurationFile=file:{REPO_ROOT / 'conf' / 'log4j2.properties'}"]
    env = {**os.environ, "SPARK_HOME": home, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_PUBLIC_DNS": "127.0.0.1",
           "SPARK_HISTORY_OPTS": " ".join([os.environ.get("SPARK_HISTORY_OPTS", ""), *opts]).strip()}
    return [str(Path(home) / "bin" / "spark-class"), HISTORY_SERVER], env


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
    log_dir = event_log_dir(cfg)
    fs, path = files.filesystem(log_dir)
    fs.makedirs(path, exist_ok=True)
    cmd, env = history_command(log_dir, args.port)
    print(f"history server: http://127.0.0.1:{args.port} (event logs {log_dir}); Ctrl-C stops it", flush=True)
    os.execve(cmd[0], cmd, env)
    return 0  # not reached: execve replaces the process
