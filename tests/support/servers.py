"""Real servers for tests, all on 127.0.0.1: a Spark standalone master with workers, and an MLflow tracking server.

They are started with the pyspark installation's own spark-class and the environment's own mlflow command, and
stopped (with their process groups) when the context exits.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pyspark.find_spark_home import _find_spark_home

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check: Callable[[], bool], what: str, timeout: float, procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"{what}: process {dead[0].args[:3]} exited with {dead[0].returncode}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready after {timeout}s")


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - loopback only
        return json.loads(r.read())


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@contextmanager
def standalone_cluster(workdir: Path, workers: int = 2, cores: int = 1, memory: str = "3g") -> Iterator[str]:
    """Start a standalone master and `workers` workers on 127.0.0.1; yield the master URL spark://127.0.0.1:PORT."""
    spark_class = str(Path(_find_spark_home()) / "bin" / "spark-class")
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
           "SPARK_LOG_DIR": str(workdir), "SPARK_NO_DAEMONIZE": "1"}
    port, ui = free_port(), free_port()
    url = f"spark://127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []

    def start(args: list[str], log: str) -> None:
        with open(workdir / log, "w") as out:
            procs.append(subprocess.Popen([spark_class, *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True))

    try:
        start(["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
               "--webui-port", str(ui)], "master.log")
        _wait(lambda: bool(_get_json(f"http://127.0.0.1:{ui}/json/")), "spark master", 90, procs)
        for i in range(workers):
            start(["org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1", "--cores", str(cores),
                   "--memory", memory, "--webui-port", str(free_port()), "--work-dir", str(workdir / f"w{i}")],
                  f"worker{i}.log")
        _wait(lambda: _get_json(f"http://127.0.0.1:{ui}/json/").get("aliveworkers") == workers,
              f"{workers} spark workers", 120, procs)
        yield url
    finally:
        _stop(procs)


@contextmanager
def _http_server(cmd: list[str], env: dict[str, str] | None, log: Path, url: str, health: str, what: str,
                 timeout: float) -> Iterator[str]:
    """Run `cmd` in its own process group, wait until GET url+health answers 200, yield `url`, then stop it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait(lambda: urllib.request.urlopen(f"{url}{health}", timeout=5).status == 200,  # noqa: S310
              what, timeout, [proc])
        yield url
    finally:
        _stop([proc])


@contextmanager
def mlflow_server(workspace: Path) -> Iterator[str]:
    """Start `mlflow server` (sqlite backend, artifacts proxied into the workspace) on 127.0.0.1; yield its URI."""
    port = free_port()
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{workspace}/mlflow.db",
           "--artifacts-destination", str(workspace / "mlartifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    with _http_server(cmd, None, workspace / "mlflow-server.log", f"http://127.0.0.1:{port}", "/health",
                      "mlflow server", 120) as uri:
        yield uri


@contextmanager
def model_server(model_uri: str, tracking_uri: str, workdir: Path) -> Iterator[str]:
    """`mlflow models serve` of `model_uri` (env manager local) on 127.0.0.1; yield its base URL."""
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local", "-h", "127.0.0.1",
           "-p", str(port), "-w", "1"]
    with _http_server(cmd, env, workdir / "model-server.log", f"http://127.0.0.1:{port}", "/ping",
                      "model server", 180) as url:
        yield url
