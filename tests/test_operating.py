"""Operating it day to day: the Spark UI on loopback (whatever SPARK_LOCAL_IP the environment exports), the event log
under the workspace, and Spark's real History Server (./spark-submit.sh history) reading a finished application back
from it, secrets masked."""

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
from tests.support.proctree import is_loopback, other_ipv4
from tests.support.secrets import AZURE_ACCOUNT, SECRETS_ENV, files_with, leaks_in

REDACTED = "*********(redacted)"  # Spark's own mask

# A small job as a user's session runs it: the project's factory with env local's settings (UI, event log), and
# secret settings read from the environment (SECRET_SETTINGS). It reports every TCP listener of its process tree and
# whether any process of the tree has a secret on its command line, while the session runs.
JOB = """
import json, sys
import psutil
from pipelines.core.config import load_config
from pipelines.core.logs import setup_logging
from pipelines.core.session import get_spark
from tests.support.secrets import NEEDLES, SECRET_SETTINGS

setup_logging()
overrides = [f"storage.workspace={sys.argv[1]}", "spark.conf.spark.eventLog.compress=false", *SECRET_SETTINGS]
spark = get_spark(load_config("local", overrides), "ops")  # the event log in plain JSON: searchable
total = spark.range(1000).selectExpr("sum(id) AS s").collect()[0].s
url = spark.sparkContext.uiWebUrl
port = int(url.rsplit(":", 1)[1])
listeners, secret_lines = set(), []
for p in [psutil.Process(), *psutil.Process().children(recursive=True)]:
    try:
        line, conns = " ".join(p.cmdline()), p.net_connections("tcp")
    except psutil.Error:  # gone, or a zombie
        continue
    listeners |= {(c.laddr.ip.removeprefix("::ffff:"), c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN}
    secret_lines += [p.pid] if any(n in line for n in NEEDLES) else []
spark.stop()
print(json.dumps({"total": total, "url": url, "port": port, "listeners": sorted(listeners),
                  "secret_lines": secret_lines}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 60) -> object:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # the first read of an app replays its log
        return json.load(r)


def test_ui_event_log_and_history_server(tmp_path: Path) -> None:
    """A session's UI stays on loopback although the environment exports another SPARK_LOCAL_IP (an edge node's);
    its event log and the History Server show the secret settings masked (the project's spark.redaction.regex)."""
    ws = tmp_path / "ws"
    other = other_ipv4()
    env = {**os.environ, **SECRETS_ENV, **({"SPARK_LOCAL_IP": other} if other else {})}
    res = subprocess.run([sys.executable, "-c", JOB, str(ws)], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["total"] == 999 * 1000 // 2
    assert all(is_loopback(ip) for ip, _ in out["listeners"]), f"SPARK_LOCAL_IP={other}: {out['listeners']}"
    assert out["url"].startswith("http://127.0.0.1:") and out["port"] in {p for _, p in out["listeners"]}
    assert out["secret_lines"] == []  # the session's JVM was started without its settings on the command line
    assert f"spark ui: {out['url']}" in res.stderr
    assert f"spark event log: file://{ws}/spark-events" in res.stderr
    logs = [p for p in (ws / "spark-events").iterdir() if not p.name.endswith(".inprogress")]
    assert len(logs) == 1  # the finished application's log
    assert leaks_in("output", res.stdout + res.stderr) == [] and files_with(ws) == []  # event log included

    port = _free_port()
    env = {**os.environ, "SPARK_HISTORY_OPTS": "-Dspark.history.fs.update.interval=1s"}
    server = subprocess.Popen([sys.executable, "-m", "pipelines.submit", "history", "--port", str(port),
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
        environment = _get(f"{base}/{app['id']}/environment")
        shown = dict(environment["sparkProperties"]) | dict(environment["hadoopProperties"])  # type: ignore[index]
        azure = f"fs.azure.account.key.{AZURE_ACCOUNT}.dfs.core.windows.net"
        assert shown["spark.hadoop.fs.s3a.secret.key"] == shown[f"spark.hadoop.{azure}"] == REDACTED
        assert shown[azure] == REDACTED and shown["spark.sql.shuffle.partitions"] == "8"
        assert leaks_in("History Server", json.dumps(environment)) == []
        listening = {c.laddr.ip.removeprefix("::ffff:") for p in seen if p.is_running()
                     for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
        assert listening == {"127.0.0.1"}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    gone, alive = psutil.wait_procs(seen, timeout=20)
    assert alive == []  # no History Server JVM left behind
