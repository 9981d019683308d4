"""Crash safety of Delta writes on both engines, and the maintain job (compaction, vacuum, stale staging).

A real writer process (local Spark from the project's session factory, DeltaStore) is SIGKILLed at a named point
of a write (see pipelines/core/failpoints.py); afterwards the table must hold exactly the old or exactly the new
rows, and the next write or a maintain run must leave no Parquet file the table does not reference and no staging
folder of a dead writer, while a live writer's staging is never touched.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import pytest
from deltalake import DeltaTable
from pyspark.sql import DataFrame, SparkSession

from pipelines.core.config import REPO_ROOT, Config, ConfigError, load_config
from pipelines.core.delta import STAGING, DeltaStore, DeltaWriteError, to_pandas
from pipelines.core.failpoints import DIR_ENV, ENV

OLD = list(range(20))
NEW = list(range(100, 140))
MORE = list(range(1000, 1005))
NO_RETENTION = ("storage.maintain.retention_hours=0", "storage.maintain.check_retention=false")

WRITER = """
import sys
from pyspark.sql import functions as F
from pipelines.core.config import load_config
from pipelines.core.delta import DeltaStore
from pipelines.core.failpoints import pause
from pipelines.core.session import get_spark

engine, path, workspace, first, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
cfg = load_config("local", [f"storage.workspace={workspace}", f"storage.engine={engine}", "spark.driver_memory=512m",
                            "spark.conf.spark.sql.shuffle.partitions=2", "spark.conf.spark.ui.enabled=false"])
spark = get_spark(cfg, "crash-writer")
last = first + count - 1

@F.udf("string")
def name(i):
    if i == last:  # the second task pauses here while the first one has written its file
        pause("delta.task_write")
    return f"row-{i}"

ids = spark.range(first, first + count, numPartitions=2).select(F.col("id").cast("int").alias("id"))
DeltaStore(spark, engine).write(ids.select("id", name("id").alias("name")), path, "append")
print("WROTE", flush=True)
"""


def _rows(spark: SparkSession, ids: list[int]) -> DataFrame:
    return spark.createDataFrame([(i, f"row-{i}") for i in ids], "id int, name string")


def _ids(path: str) -> list[int]:
    """The latest version's ids, read with delta-rs and pyarrow (not with the store under test)."""
    return sorted(int(i) for i in to_pandas(path)["id"])


def _digest(path: str) -> tuple[int, str]:
    """Row count and a hash of the sorted content of the latest version."""
    df = to_pandas(path).sort_values("id").reset_index(drop=True)
    return len(df), hashlib.sha256(df.to_csv(index=False).encode()).hexdigest()


def _parquet_on_disk(path: str) -> set[str]:
    return {str(p) for p in Path(path).rglob("*.parquet")}


def _referenced(path: str) -> set[str]:
    return set(DeltaTable(path).file_uris())


def _staging_entries(path: str) -> list[str]:
    folder = Path(path) / STAGING
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


class Writer:
    """A writer process paused at a failpoint: started, waited for, and SIGKILLed with its JVM."""

    def __init__(self, engine: str, path: str, workspace: Path, point: str, ids: list[int]) -> None:
        self.marker_dir = workspace / "failpoints"
        self.log = workspace / f"writer-{point}.log"
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), ENV: point, DIR_ENV: str(self.marker_dir)}
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", WRITER, engine, path, str(workspace), str(ids[0]), str(len(ids))],
                cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.point = point

    def wait_for_point(self, timeout: float = 480) -> None:
        deadline = time.monotonic() + timeout
        while not (self.marker_dir / self.point).exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"writer never reached {self.point}:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the driver and everything it started (its JVM, Python workers): a crashed machine."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)


def _maintain(spark: SparkSession, cfg: Config, store: DeltaStore) -> dict:
    from pipelines.stages.maintain import run_maintain

    return run_maintain(spark, cfg, store)


# engine, kill point, what cleans up afterwards, whether the write had committed
CASES = [
    ("embedded", "delta.task_write", "write", False),
    ("embedded", "delta.after_move", "write", False),
    ("embedded", "delta.before_commit", "maintain", False),
    ("embedded", "delta.after_commit", "maintain", True),
    ("delta-spark", "delta.task_write", "maintain-no-retention", False),
    ("delta-spark", "delta.after_commit", "write", True),
]
CASE_IDS = [f"{c[0]}-{c[1].split('.')[1]}" for c in CASES]
Writers = dict[str, tuple[Config, Writer]]


@pytest.fixture(scope="module")
def writers(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Writers]:
    """Each crash case's table (the old rows) and its writer process, all started at once: a writer takes 10-20 s
    to start (a minute under load), so the cases wait for them together."""
    out = {}
    for case_id, (engine, point, cleanup, _) in zip(CASE_IDS, CASES, strict=True):
        workspace = tmp_path_factory.mktemp(case_id)
        cfg = load_config("local", [f"storage.workspace={workspace}", f"storage.engine={engine}",
                                    *(NO_RETENTION if cleanup == "maintain-no-retention" else ())])
        DeltaStore(spark, engine).write(_rows(spark, OLD), cfg.catalog.path("features"), "append")
        out[case_id] = (cfg, Writer(engine, cfg.catalog.path("features"), workspace, point, NEW))
    yield out
    for _, writer in out.values():
        writer.kill()


@pytest.mark.parametrize(("engine", "point", "cleanup", "committed"), CASES, ids=CASE_IDS)
def test_killed_writer_leaves_old_or_new_rows_and_no_litter(
    spark: SparkSession, writers: Writers, request: pytest.FixtureRequest,
    engine: str, point: str, cleanup: str, committed: bool,
) -> None:
    cfg, writer = writers[request.node.callspec.id]
    store = DeltaStore(spark, engine)
    path = cfg.catalog.path("features")
    old = list(OLD)
    writer.wait_for_point()
    if point == "delta.task_write":  # Spark is writing: the first task's file is on disk already
        deadline = time.monotonic() + 60
        while len(_parquet_on_disk(path)) <= len(_referenced(path)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _parquet_on_disk(path) - _referenced(path), "the killed writer had written no file yet"
    if point == "delta.after_move":  # a live writer's staging and moved files survive another writer's clean-up
        assert _staging_entries(path) and _parquet_on_disk(path) - _referenced(path)
        live_files = _parquet_on_disk(path) - _referenced(path)
        store.write(_rows(spark, [500]), path, "append")
        assert live_files <= _parquet_on_disk(path) and len(_staging_entries(path)) >= 1
        old.append(500)
    writer.kill()

    expected = sorted(old + NEW) if committed else sorted(old)
    assert _ids(path) == expected  # readable, exactly the old rows or exactly the new ones
    if cleanup == "write":
        store.write(_rows(spark, MORE), path, "append")
        expected = sorted(expected + MORE)
        assert _parquet_on_disk(path) == _referenced(path)  # appends only: every kept file is referenced
    else:  # maintain: the same rows; compacted files stay for the retention unless it is 0
        referenced, disk, digest = _referenced(path), _parquet_on_disk(path), _digest(path)
        done = _maintain(spark, cfg, store)["features"]
        assert _digest(path) == digest and done["files_compacted"] == len(referenced)
        kept = set() if cleanup == "maintain-no-retention" else referenced
        after = _parquet_on_disk(path)
        assert after == _referenced(path) | kept and (disk - referenced).isdisjoint(after)
        assert done["files_removed"] == len(disk - after)
        assert done["staging_removed"] == (1 if engine == "embedded" else 0)
    assert _ids(path) == expected
    assert _staging_entries(path) == []


def test_failure_after_commit_keeps_the_committed_files(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Embedded engine: an error after delta-rs committed (here while reading the version back) must not delete
    the files the new version references; the write counts as done."""
    store = DeltaStore(spark, "embedded")
    path = str(tmp_path / "t")
    store.write(_rows(spark, OLD), path, "append")
    monkeypatch.setenv(ENV, "delta.after_commit:raise")
    try:
        version: int | None = store.write(_rows(spark, NEW), path, "append")
    except DeltaWriteError:
        version = None
    monkeypatch.delenv(ENV)
    assert _ids(path) == sorted(OLD + NEW)
    assert version == 1 == DeltaTable(path).version()
    assert _parquet_on_disk(path) == _referenced(path) and _staging_entries(path) == []


def test_failure_before_commit_removes_the_moved_files(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Embedded engine: an error right before the commit leaves the previous version and no moved file."""
    store = DeltaStore(spark, "embedded")
    path = str(tmp_path / "t")
    store.write(_rows(spark, OLD), path, "append")
    monkeypatch.setenv(ENV, "delta.before_commit:raise")
    with pytest.raises(DeltaWriteError, match="previous version"):
        store.write(_rows(spark, NEW), path, "append")
    monkeypatch.delenv(ENV)
    assert _ids(path) == OLD and DeltaTable(path).version() == 0
    assert _parquet_on_disk(path) == _referenced(path) and _staging_entries(path) == []


def test_maintain_job_compacts_and_vacuums_without_changing_what_readers_see(
    spark: SparkSession, make_cfg: Callable[..., Config]
) -> None:
    """The job on the embedded engine (delta-spark's OPTIMIZE and VACUUM run in the killed-writer case)."""
    from jobs.maintain import main

    engine = "embedded"
    cfg = make_cfg(f"storage.engine={engine}", *NO_RETENTION)
    store = DeltaStore(spark, engine)
    path = cfg.catalog.path("features")
    other = cfg.catalog.path("predictions")
    for chunk in (OLD[:5], OLD[5:10], OLD[10:]):
        store.write(_rows(spark, chunk), path, "append")
    store.write(_rows(spark, NEW[:3]), other, "overwrite")
    store.write(_rows(spark, NEW[3:6]), other, "overwrite")  # the first version's file is now tombstoned
    before = {p: _digest(p) for p in (path, other)}
    disk_before = {p: _parquet_on_disk(p) for p in (path, other)}
    sizes_before = {f: Path(f).stat().st_size for p in (path, other) for f in disk_before[p]}

    args = ["--set", f"storage.workspace={cfg.workspace}", "--set", f"storage.engine={engine}"]
    args += [a for o in NO_RETENTION for a in ("--set", o)]
    assert main(args) == 0

    for p in (path, other):
        assert _digest(p) == before[p]  # same rows, same content
        assert _parquet_on_disk(p) == _referenced(p)  # retention 0: nothing unreferenced is kept
    assert len(_referenced(path)) < len(disk_before[path])  # three appends compacted
    removed = {f for p in (path, other) for f in disk_before[p] - _parquet_on_disk(p)}
    with pytest.raises(Exception):  # noqa: B017 - the version's files are gone: time travel past retention fails
        to_pandas(path, 0)

    mlflow.set_tracking_uri(cfg.tracking_uri)
    (run,) = mlflow.search_runs(experiment_names=[cfg.mlflow.experiment], output_format="list",
                                filter_string="tags.job = 'maintain'")
    m = run.data.metrics
    assert m["files_removed"] == len(removed)
    assert m["bytes_removed"] == sum(sizes_before[f] for f in removed)
    assert m["tables"] == 2 and m["features.files_compacted"] == len(disk_before[path])


def test_maintain_default_retention_keeps_time_travel(spark: SparkSession, make_cfg: Callable[..., Config]) -> None:
    cfg = make_cfg("storage.engine=embedded")
    store = DeltaStore(spark, "embedded")
    path = cfg.catalog.path("features")
    for chunk in (OLD[:10], OLD[10:]):
        store.write(_rows(spark, chunk), path, "append")
    disk = _parquet_on_disk(path)
    report = _maintain(spark, cfg, store)
    assert _ids(path) == OLD and sorted(to_pandas(path, 0)["id"]) == OLD[:10]  # old versions still readable
    assert report["features"]["files_removed"] == 0 and disk < _parquet_on_disk(path)
    assert report["features"]["files_compacted"] == len(disk) and len(_referenced(path)) == 1


def test_maintain_refuses_short_retention_unless_the_check_is_off(make_cfg: Callable[..., Config]) -> None:
    with pytest.raises(ConfigError, match="storage.maintain.check_retention"):
        make_cfg("storage.maintain.retention_hours=1")
    assert make_cfg(*NO_RETENTION).storage.maintain.retention_hours == 0
