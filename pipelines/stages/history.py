"""Spark's History Server on the event logs a workspace keeps (<workspace>/spark-events), bound to 127.0.0.1: the
UI of finished jobs after their driver has gone. `./spark-submit.sh history` (jobs/history.py)
runs it in the foreground (Ctrl-C stops it); nothing is written into the virtual environment (the sbin/ scripts
would put their pid and log files there)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

from pipelines.core import files
from pipelines.core.config import REPO_ROOT, Config
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


def run_history(cfg: Config, port: int = DEFAULT_PORT) -> NoReturn:
    """Replace this process with the History Server on the workspace's event logs (created if missing)."""
    log_dir = event_log_dir(cfg)
    fs, path = files.filesystem(log_dir)
    fs.makedirs(path, exist_ok=True)
    cmd, env = history_command(log_dir, port)
    print(f"history server: http://127.0.0.1:{port} (event logs {log_dir}); Ctrl-C stops it", flush=True)
    os.execve(cmd[0], cmd, env)
