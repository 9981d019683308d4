"""The chain on a real Hadoop cluster: Hadoop's MiniCluster (HDFS + YARN, one NodeManager) on 127.0.0.1, the
workspace on hdfs:// (Delta tables written by delta-spark on HDFS), the packed virtual environment shipped with
--archives, the project wheel with --py-files, MLflow through a tracking server on loopback, all submitted through
./spark-submit.sh --env yarn: run-all in client deploy mode, then a score job in cluster deploy mode. The cluster-mode
score carries the secrets check: a tracking URI with a password ('@' and '='), a secret s3a key and an Azure account
key, none of which may appear on any command line on the machine while it runs (sampled every 0.2 s), in the
NodeManager's container logs (YARN copies each container's launch script, with its environment, there), in the
workspace on HDFS, in MLflow or in the console."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pytest
from deltalake import DeltaTable, QueryBuilder
from mlflow.tracking import MlflowClient
from pyspark.sql import SparkSession

from pipelines.core import files
from pipelines.core.config import REPO_ROOT
from tests.chain import FAST_TRAINING
from tests.support.hadoop import HadoopCluster, hadoop_cluster, pinned_hadoop_version, pyspark_hadoop_version
from tests.support.secrets import (
    NEEDLES,
    SECRET_SETTINGS,
    SECRETS_ENV,
    CommandLines,
    files_with,
    leaks_in,
    with_password,
)
from tests.support.servers import mlflow_server
from tests.test_concurrency import BARRIER
from tests.test_standalone import barrier_executors

YARN_SETTINGS = ["demo.fraction=0.01", "demo.datasets=[flights]", "ingest.select=[flights,weather,planes,airlines]",
                 *FAST_TRAINING,
                 # Two one-core executors of 1 GiB on the MiniCluster's NodeManager; the driver on loopback.
                 "spark.num_executors=2", "spark.executor_cores=1", "spark.executor_memory=1g",
                 "spark.driver_memory=2g", "spark.queue=default",
                 "spark.conf.spark.driver.host=127.0.0.1", "spark.conf.spark.driver.bindAddress=127.0.0.1",
                 "spark.conf.spark.yarn.am.memory=512m", "spark.conf.spark.executor.memoryOverhead=512m",
                 "spark.conf.spark.sql.shuffle.partitions=4"]

HDFS_INGEST = ["ingest.sources.t={path: t/*, table: t, columns: {id: int, name: string}}", "ingest.settle_s=0"]


@pytest.fixture(scope="module")
def hadoop(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    with hadoop_cluster(tmp_path_factory.mktemp("hadoop")) as cluster:
        yield cluster


def _delta_count(uri: str, where: str = "true") -> int:
    res = QueryBuilder().register("t", DeltaTable(uri)).execute(f"select count(*) as n from t where {where}")
    return pa.table(res.read_all()).to_pylist()[0]["n"]


def _archived_link(archive: Path, member: str) -> str:
    """Target of the symbolic link `member` in a tar.gz, read as a stream up to that member."""
    with tarfile.open(archive, "r|gz") as tar:
        for info in tar:
            if info.name == member:
                return info.linkname
    raise KeyError(member)


def _hdfs_files_with(root: str, skip: str) -> list[str]:
    """Files under `root` on HDFS (not under `root`/`skip`) holding a sentinel."""
    fs, path = files.filesystem(root)
    hits = []
    for f in fs.find(path):
        if not f.startswith(f"{path.rstrip('/')}/{skip}/"):
            data = fs.cat_file(f)
            hits += [f"hdfs {f}: {n}" for n in NEEDLES if n.encode() in data]
    return hits


def _run(job: str, args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Submit `job` to YARN; its exit code and output (stdout and stderr)."""
    res = subprocess.run([str(REPO_ROOT / "spark-submit.sh"), job, "--env", "yarn", *args], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=2400)
    return res.returncode, res.stdout + res.stderr


def _succeeded(job: str, code: int, out: str) -> str:
    log = [ln for ln in out.splitlines() if not ln.lstrip().startswith("at ")]  # drop JVM frames
    assert code == 0, f"{job} on YARN failed:\n" + "\n".join(log[-120:])
    return out


def _submit(job: str, args: list[str], env: dict[str, str]) -> str:
    return _succeeded(job, *_run(job, args, env))


CONTENDER = """
import sys, time
from pipelines.core.lease import Lease
folder, run = sys.argv[1], sys.argv[4]
lease = Lease(folder, run, expiry_s=4, heartbeat_s=0.5, wait_s=300, poll_s=0.2)
barrier(*sys.argv[2:4])
pending = lease.acquire()
print("HOLDS", lease.record.generation, ",".join(pending), flush=True)
time.sleep(600)  # holds the lease, beating, until it is killed
"""


class _Contender:
    """A real process racing for the lease; its HOLDS line (generation, pending runs) is read as it comes."""

    def __init__(self, folder: str, barrier: Path, run: str, env: dict[str, str]) -> None:
        self.run, self.holds, self.held_at = run, None, 0.0
        self.proc = subprocess.Popen([sys.executable, "-c", BARRIER + CONTENDER, folder, str(barrier), "2", run],
                                     cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        self.out: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.out.append(line)
            if line.startswith("HOLDS"):
                self.holds, self.held_at = line.split()[1:], time.monotonic()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)


def test_ingest_lease_on_hdfs_one_holder_per_generation(hadoop: HadoopCluster, tmp_path: Path) -> None:
    """Two real processes race for one lease folder on HDFS: exactly one holds generation 1; the other waits
    while the holder lives (beating), and takes generation 2 over only after the holder was SIGKILLed, inheriting
    its run as pending."""
    folder = f"{hadoop.fs_uri}/user/pipeline/leases/ingest"
    env = {**os.environ, **hadoop.env(), "PYTHONPATH": str(REPO_ROOT)}
    contenders = [_Contender(folder, tmp_path / "barrier", run, env) for run in ("a", "b")]
    try:
        deadline = time.monotonic() + 120
        while not any(c.holds for c in contenders):
            assert time.monotonic() < deadline and all(c.proc.poll() is None for c in contenders), [
                "".join(c.out)[-2000:] for c in contenders]
            time.sleep(0.1)
        time.sleep(6)  # longer than the expiry: a live holder is never taken over
        (winner,) = [c for c in contenders if c.holds]
        (loser,) = [c for c in contenders if c is not winner]
        assert winner.holds == ["1"] and loser.holds is None and loser.proc.poll() is None
        winner.kill()
        killed = time.monotonic()
        while loser.holds is None:
            assert time.monotonic() < killed + 60 and loser.proc.poll() is None, "".join(loser.out)[-2000:]
            time.sleep(0.1)
        assert loser.holds == ["2", winner.run] and loser.held_at > killed
        names = sorted(os.path.basename(p) for p in files.listdir(folder))
        assert [n for n in names if n.endswith(".json")] == [f"{1:012d}.json", f"{2:012d}.json"], names
    finally:
        for c in contenders:
            c.kill()


def test_minicluster_matches_pyspark_hadoop() -> None:
    """The test cluster runs the Hadoop version of pyspark's bundled client (conf/jvm/pom.xml pins it)."""
    assert pinned_hadoop_version() == pyspark_hadoop_version()


def test_minicluster_listens_on_loopback_only(hadoop: HadoopCluster) -> None:
    listening = {(c.laddr.ip, c.laddr.port) for c in psutil.Process(hadoop.pid).net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN}
    assert len(listening) >= 10  # NameNode, DataNode, ResourceManager, NodeManager, JobHistory: RPC and web
    assert {ip for ip, _ in listening} <= {"127.0.0.1", "::ffff:127.0.0.1"}, sorted(listening)


FORK_AFTER_HDFS = """
import subprocess, sys
from pipelines.core import files
print(len(files.listdir(sys.argv[1])), flush=True)
print("child", subprocess.run(["true"], preexec_fn=lambda: None, timeout=60).returncode, flush=True)
"""


def test_a_process_that_used_hdfs_still_starts_processes(hadoop: HadoopCluster) -> None:
    """After HDFS use through pipelines.core.files, a subprocess started with preexec_fn (as pyspark starts its
    gateway and the launcher its training processes) starts. fsspec empties its instance cache in a forked child;
    dropping an hdfs-native client there hung the child before exec, for good (the test session's own Spark start
    hung this way after the YARN tests)."""
    env = {**os.environ, **hadoop.env(), "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", FORK_AFTER_HDFS, f"{hadoop.fs_uri}/"], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the subprocess after HDFS use hung:\n{out[-2000:]}")
    assert proc.returncode == 0 and out.splitlines()[-1] == "child 0", out[-2000:]


def test_chain_on_yarn_with_hdfs_workspace(hadoop: HadoopCluster, tmp_path: Path) -> None:
    ws = f"{hadoop.fs_uri}/user/pipeline/spark-ml-pipeline"
    events = tmp_path / "events"
    events.mkdir()
    sets = [f"--set={s}" for s in [*YARN_SETTINGS, "spark.conf.spark.eventLog.enabled=true",
                                   f"spark.conf.spark.eventLog.dir=file://{events}",
                                   "spark.conf.spark.eventLog.compress=false",
                                   "spark.conf.spark.eventLog.rolling.enabled=false"]]
    with mlflow_server(tmp_path / "mlflow") as uri:
        env = {**os.environ, **hadoop.env(), "PIPELINE_HOME": ws, "MLFLOW_TRACKING_URI": uri,
               "PIPELINE_DIST": str(tmp_path / "dist"), "CLUSTER_PYTHON_PREFIX": sys.base_prefix,
               "SPARK_DEPLOY_MODE": "client"}
        start = time.monotonic()
        out = _submit("run-all", sets, env)
        print(f"run-all on YARN (client mode): {time.monotonic() - start:.0f}s")
        assert "stage=ingest.flights files_new=12" in out and "rows_ok=3368" in out
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("spark-ml-pipeline")
        (ingest_run,) = client.search_runs([exp.experiment_id], "tags.job = 'ingest'")
        assert ingest_run.data.metrics["flights.rows_ok"] == 3368 and ingest_run.data.tags["env"] == "yarn"
        assert client.get_model_version_by_alias("flight-delay", "champion").version == "1"
        assert {r.data.tags["job"] for r in client.search_runs([exp.experiment_id])} >= {
            "ingest", "features", "train", "score", "monitor"}

        # The tables live on HDFS, written by delta-spark, and delta-rs reads them there.
        bronze, gold = f"{ws}/tables/bronze/flights", f"{ws}/tables/gold/predictions"
        assert DeltaTable(bronze).version() == 0 and _delta_count(bronze) == 3368
        assert "delta-lake/4.0.1" in str(DeltaTable(bronze).history(1)[0].get("engineInfo", "")).lower()
        landed = files.listdir(f"{ws}/tables/landing/flights")
        assert len([f for f in landed if f.endswith(".csv")]) == 12
        gold_rows = _delta_count(gold)
        dates = sorted(p["flight_date"] for p in DeltaTable(gold).partitions()) if gold_rows else []
        assert gold_rows > 0 and dates

        # The shipped environment's python links to Python on the nodes (CLUSTER_PYTHON_PREFIX).
        link = _archived_link(tmp_path / "dist" / "pyenv.tar.gz", "bin/python3.11")
        assert link == f"{sys.base_prefix}/bin/python3.11"

        # Each barrier (Horovod) stage ran one task on each of the two YARN executors.
        stages = barrier_executors(events)
        assert stages and all(len(s) == 2 for s in stages), stages

        # Cluster deploy mode: the driver runs in a YARN container, conf travels as an archive; re-scoring a
        # date replaces its partition (same rows, one more version).
        day = dates[0]
        before = _delta_count(gold, f"flight_date = '{day}'")
        version = DeltaTable(gold).version()
        cluster_env = {**env, **SECRETS_ENV, "SPARK_DEPLOY_MODE": "cluster", "MLFLOW_TRACKING_URI": with_password(uri)}
        start = time.monotonic()
        with CommandLines() as lines:
            code, out = _run("score", ["--date", str(day), *[s for s in sets if "eventLog" not in s],
                                       *[f"--set={s}" for s in SECRET_SETTINGS]], cluster_env)
        print(f"score on YARN (cluster mode): {time.monotonic() - start:.0f}s, {lines.samples} samples of "
              f"{len(lines.processes)} processes' command lines")
        recorded = str([[r.data.params, r.data.tags] for r in client.search_runs([exp.experiment_id])])

        # The sentinels: on no command line, in no container log, file of the workspace or MLflow, nor the console.
        nm_logs = [d for d in hadoop.workdir.rglob("*") if d.is_dir() and "logDir-nm" in d.name]
        launch_scripts = [f for d in nm_logs for f in d.rglob("launch_container.sh")]
        assert nm_logs and launch_scripts, "no NodeManager log folder with container launch scripts"
        assert lines.samples > 50
        leaks = lines.leaks() + leaks_in("console", out) + leaks_in("MLflow params and tags", recorded)
        leaks += [hit for d in nm_logs for hit in files_with(d)]
        leaks += files_with(tmp_path, skip=("dist",))  # the tracking server's store and artifacts, the event logs
        leaks += _hdfs_files_with(ws, skip="dist")  # tables, models, checkpoints (dist: the packed environment)
        assert leaks == [], "\n".join(leaks)

        _succeeded("score", code, out)
        assert DeltaTable(gold).version() == version + 1
        assert _delta_count(gold, f"flight_date = '{day}'") == before
        score_runs = client.search_runs([exp.experiment_id], "tags.job = 'score'", order_by=["start_time DESC"])
        assert len(score_runs) == 2 and score_runs[0].data.tags["env"] == "yarn"


def test_ingest_from_hdfs_landing_zone(hadoop: HadoopCluster, spark: SparkSession, tmp_path: Path) -> None:
    """Ingest with the workspace (landing zone and tables) on the MiniCluster's HDFS, from the shared local Spark
    session: HDFS modification times identify deliveries, so a same-size re-delivery with other content is
    quarantined with its reason, an identical re-delivery is no new delivery, and a file `hdfs dfs -put` is still
    copying (`._COPYING_`) is ignored."""
    from pipelines.core.config import load_config
    from pipelines.core.delta import DeltaStore
    from pipelines.stages.ingest.deliveries import REDELIVERED
    from pipelines.stages.ingest.run import ingest

    cfg = load_config("local", [f"storage.workspace={hadoop.fs_uri}/user/pipeline/deliveries",
                                f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", *HDFS_INGEST])
    fs, folder = files.filesystem(f"{cfg.catalog.landing}/t")
    fs.makedirs(folder, exist_ok=True)
    fs.pipe_file(f"{folder}/a.csv", b"id,name\n1,a\n2,b\n")
    fs.pipe_file(f"{folder}/b.csv", b"id,name\n3,c\n")
    fs.pipe_file(f"{folder}/c.csv._COPYING_", b"id,name\n4,cut")
    store = DeltaStore(spark)
    (first,) = ingest(spark, cfg, store, "run-1", ["t"])
    fs.pipe_file(f"{folder}/a.csv", b"id,name\n1,a\n2,b\n")  # identical, written again
    fs.pipe_file(f"{folder}/b.csv", b"id,name\n3,C\n")  # same size, other content
    (second,) = ingest(spark, cfg, store, "run-2", ["t"])
    bronze = sorted((r.id, r.name) for r in store.read(cfg.catalog.path("t")).collect())
    assert (bronze, [(f.file.rsplit("/", 1)[-1], f.status, (f.reason or "").split(":")[0]) for f in second.files]
            ) == ([(1, "a"), (2, "b"), (3, "c")], [("b.csv", "quarantined", REDELIVERED)])
    assert sorted(f.file.rsplit("/", 1)[-1] for f in first.files) == ["a.csv", "b.csv"]
    assert first.ignored_files == 1 and second.skipped_files == 1
    assert all(f.mtime_ms > 0 for f in first.files)
