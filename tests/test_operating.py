"""Operating it day to day: the Spark UI on loopback, the event log under the workspace, and Spark's real History
Server (./spark-submit.sh history) reading a finished application back from it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

from pipelines.core.config import REPO_ROOT

# A small job as a user's session runs it: the project's factory with env local's settings (UI, event log).
JOB = """
import json, sys
import psutil
from pipelines.core.config import load_config
from pipelines.core.logs import setup_logging
from pipelines.core.session import get_spark

setup_logging()
spark = get_spark(load_config("local", [f"storage.workspace={sys.argv[1]}"]), "ops")
total = spark.range(1000).selectExpr("sum(id) AS s").collect()[0].s
url = spark.sparkContext.uiWebUrl
port = int(url.rsplit(":", 1)[1])
listeners = {c.laddr.ip.removeprefix("::ffff:") for p in psutil.Process().children(recursive=True)
             for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
spark.stop()
print(json.dumps({"total": total, "url": url, "listeners": sorted(listeners)}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 60) -> object:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # the first read of an app replays its log
        return json.load(r)


def test_ui_event_log_and_history_server(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    res = subprocess.run([sys.executable, "-c", JOB, str(ws)], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["total"] == 999 * 1000 // 2
    assert out["url"].startswith("http://127.0.0.1:") and out["listeners"] == ["127.0.0.1"]  # loopback only
    assert f"spark ui: {out['url']}" in res.stderr
    assert f"spark event log: file://{ws}/spark-events" in res.stderr
    logs = [p for p in (ws / "spark-events").iterdir() if not p.name.endswith(".inprogress")]
    assert len(logs) == 1  # the finished application's log

    port = _free_port()
    env = {**os.environ, "SPARK_HISTORY_OPTS": "-Dspark.history.fs.update.interval=1s"}
    server = subprocess.Popen([sys.executable, "-m", "pipelines.core.submit", "history", "--port", str(port),
                               "--set", f"storage.workspace={ws}"], cwd=REPO_ROOT, env=env, start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[psutil.Process] = []
    try:
        base = f"http://127.0.0.1:{port}/api/v1/applications"
        apps: list = []
        deadline = time.monotonic() + 90
        while not apps and time.monotonic() < deadline:
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            seen = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
            try:
                apps = _get(base, 5)  # type: ignore[assignment]
            except OSError:
                time.sleep(1)
        assert apps, "the History Server listed no application within 90 s"
        (app,) = apps
        assert app["name"] == "spark-ml-pipeline-ops" and app["attempts"][0]["completed"] is True
        jobs = _get(f"{base}/{app['id']}/jobs")
        succeeded = [j for j in jobs if j["status"] == "SUCCEEDED"]  # type: ignore[union-attr]
        assert len(succeeded) > 0 and sum(j["numCompletedTasks"] for j in succeeded) > 0
        listening = {c.laddr.ip.removeprefix("::ffff:") for p in seen if p.is_running()
                     for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
        assert listening == {"127.0.0.1"}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    gone, alive = psutil.wait_procs(seen, timeout=20)
    assert alive == []  # no History Server JVM left behind
