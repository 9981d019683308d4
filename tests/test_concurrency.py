"""Jobs started at the same moment in one workspace: both run, and nothing they write is lost or doubled.

Real processes fired together (a shared start time after their imports, so they race for real): the packaging
step of two submits, two first initialisations of one fresh sqlite tracking store, and two `./spark-submit.sh
ingest` on a brand-new workspace. Two writers committing to the same gold partition at once (batch scoring and a
stream's upsert) are threads of the shared session, whose commits conflict for real.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import zipfile
from datetime import date
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from pipelines.core.config import REPO_ROOT
from tests.support.held import HeldWriter

SCRIPT = str(REPO_ROOT / "spark-submit.sh")
# Each process signs in at a barrier folder after its imports and goes when all have: they race for real.
BARRIER = """
import os, sys, time
from pathlib import Path
def barrier(folder, n):
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / str(os.getpid())).touch()
    while len(list(Path(folder).iterdir())) < int(n):
        time.sleep(0.005)
"""

PACKAGING = """
import sys, time, zipfile
from pathlib import Path
from pipelines.core.config import REPO_ROOT
from tests.support.held import HeldWriter
from pipelines.submit import build_code_zip, build_conf_archive
dist = Path(sys.argv[1])
barrier(*sys.argv[2:4])
for _ in range(int(sys.argv[4])):
    code = build_code_zip(dist / "project-code.zip")
    conf = build_conf_archive(REPO_ROOT / "conf", dist / "conf.zip")
    for f in (code, conf):
        with zipfile.ZipFile(f) as zf:
            assert zf.testzip() is None, f
"""

TRACKING = """
import sys, time
import mlflow
from pipelines.core.config import load_config
from pipelines.core.tracking import configure_mlflow
cfg = load_config("local", [f"storage.workspace={sys.argv[1]}"])
barrier(*sys.argv[2:4])
configure_mlflow(cfg)
with mlflow.start_run(run_name=sys.argv[4]):
    mlflow.log_param("who", sys.argv[4])
"""


def _fire(code: str, args_per_process: list[list[str]], barrier: Path, timeout: float = 300
          ) -> list[subprocess.CompletedProcess]:
    """Start one `python -c code` per argument list, all leaving `barrier` together; wait for all of them."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    n = str(len(args_per_process))
    procs = [subprocess.Popen([sys.executable, "-c", BARRIER + code, args[0], str(barrier), n, *args[1:]],
                              cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for args in args_per_process]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def test_two_submits_package_at_the_same_moment(tmp_path: Path) -> None:
    """Two packaging steps into one dist folder at once: both succeed and every artifact is a whole zip."""
    dist = tmp_path / "dist"
    results = _fire(PACKAGING, [[str(dist), "20"], [str(dist), "20"]], tmp_path / "barrier")
    assert [r.returncode for r in results] == [0, 0], [r.stderr[-1500:] for r in results]
    names = zipfile.ZipFile(dist / "project-code.zip").namelist()
    assert "pipelines/submit.py" in names and "jobs/ingest.py" in names
    assert "base/storage.yaml" in zipfile.ZipFile(dist / "conf.zip").namelist()
    assert sorted(p.name for p in dist.iterdir()) == ["conf.zip", "project-code.zip"]  # no temporary left


def test_two_processes_initialise_one_fresh_tracking_store(tmp_path: Path) -> None:
    """Two jobs on a brand-new workspace create its sqlite tracking store at once: both runs are recorded."""
    ws = tmp_path / "workspace"
    results = _fire(TRACKING, [[str(ws), "a"], [str(ws), "b"], [str(ws), "c"]], tmp_path / "barrier")
    assert [r.returncode for r in results] == [0, 0, 0], [r.stderr[-1500:] for r in results]
    with sqlite3.connect(ws / "mlflow.db") as db:
        runs = sorted(r[0] for r in db.execute("select name from runs"))
    assert runs == ["a", "b", "c"]


def _data_lines(folder: Path) -> int:
    """Data lines of the landed CSVs, counted with plain Python: all lines but each file's header and blanks."""
    total = 0
    for f in folder.glob("*.csv"):
        lines = [line for line in f.read_text().splitlines() if line.strip()]
        total += len(lines) - 1
    return total


@pytest.mark.slow
def test_two_ingests_fired_together_on_a_new_workspace(spark: SparkSession, tmp_path: Path) -> None:
    """Two `./spark-submit.sh ingest` at the same moment on a workspace with no tracking store and no dist yet:
    both exit 0, every landed row is in bronze exactly once, and one run ingested every file (the ingest lease: the
    other waited, then found nothing new)."""
    from pipelines.core.config import load_config
    from pipelines.core.delta import DeltaStore
    from pipelines.stages.land_demo import land_demo

    ws = tmp_path / "workspace"
    cfg = load_config("local", [f"storage.workspace={ws}", "demo.fraction=0.01"])
    land_demo(cfg.catalog.landing, cfg.demo.fraction, cfg.demo.seed, ["flights"])
    expected = _data_lines(Path(cfg.catalog.landing) / "flights")
    assert expected > 1000 and not (ws / "mlflow.db").exists() and not (ws / "dist").exists()
    env = {**os.environ, "PIPELINE_HOME": str(ws)}
    cmd = [SCRIPT, "ingest", "--sources", "flights"]
    procs = [subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-2500:] for o in outs]
    bronze = DeltaStore(spark).read(cfg.catalog.path("flights"))
    assert bronze.count() == expected
    assert bronze.select("_source_file").distinct().count() == 12
    log = DeltaStore(spark).read(cfg.catalog.path("ingest_log")).filter("status = 'ingested'").collect()
    assert sorted(Path(r.file).name for r in log) == sorted(f.name for f in (Path(cfg.catalog.landing) / "flights")
                                                            .glob("*.csv"))  # each file once
    assert len({r.run_id for r in log}) == 1


def _gold(spark: SparkSession, day: date, keys: range, tag: str):  # noqa: ANN202 - a DataFrame
    return spark.createDataFrame([(k, day, tag) for k in keys], "id int, flight_date date, written_by string")


@pytest.mark.parametrize("engine", ["delta-spark", "embedded"])
def test_batch_score_and_stream_upsert_on_one_partition(spark: SparkSession, tmp_path: Path, engine: str) -> None:
    """Batch scoring replaces a date while stream upserts add new keys to the same date, at the same time, a few
    rounds each. Every write ends as exactly one commit (a conflict is retried: re-read,
    recomputed, recommitted), and the table equals those commits applied in their order: the rows of the last
    batch, plus the keys of every stream batch committed after it; nothing stale, lost or doubled."""
    from pipelines.core.delta import DeltaStore
    from pipelines.stages.score.batch import ResolvedModel, replace_partitions, upsert_partitions

    day, rounds = date(2013, 6, 1), 3
    model = ResolvedModel("m", "1", "models:/m/1", "/1", "run", {})
    store = DeltaStore(spark, engine)
    path = str(tmp_path / engine / "gold")
    store.write(_gold(spark, day, range(0, 100), "seed"), path, "overwrite", ["flight_date"])
    errors: list[str] = []
    together = threading.Barrier(2, timeout=600)  # each round's two writes start at the same moment

    def batch() -> None:
        try:
            for r in range(rounds):
                together.wait()
                replace_partitions(store, path, _gold(spark, day, range(0, 100), f"batch{r}"), "flight_date",
                                   [day], model)
        except Exception as e:  # the assertion below shows it
            together.abort()
            errors.append(f"batch: {type(e).__name__}: {str(e)[:600]}")

    def stream() -> None:
        try:
            for r in range(rounds):
                together.wait()
                upsert_partitions(store, path, _gold(spark, day, range(1000 + 10 * r, 1010 + 10 * r),
                                                     f"stream{r}"), ["id"], "flight_date")
        except Exception as e:
            together.abort()
            errors.append(f"stream: {type(e).__name__}: {str(e)[:600]}")

    threads = [threading.Thread(target=batch), threading.Thread(target=stream)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert errors == [], engine
    # The commits after the seed, oldest first: a batch write carries the model in its metadata, an upsert not.
    commits = [h for h in reversed(store.history(path)) if h["version"] > 0]
    kinds = ["batch" if h["metadata"].get("model") else "stream" for h in commits]
    assert sorted(kinds) == ["batch"] * rounds + ["stream"] * rounds, (engine, kinds)
    last_batch = max(i for i, k in enumerate(kinds) if k == "batch")
    later_streams = kinds[:last_batch].count("stream"), kinds.count("stream")
    expected = {(k, f"batch{rounds - 1}") for k in range(0, 100)}
    expected |= {(1000 + 10 * r + j, f"stream{r}") for r in range(*later_streams) for j in range(10)}
    rows = [(r["id"], r["written_by"]) for r in store.read(path).collect()]
    assert len(rows) == len(expected) and set(rows) == expected, engine


@pytest.mark.parametrize("engine", ["delta-spark", "embedded"])
def test_replace_of_a_date_sees_a_stream_upsert_between_its_read_and_its_commit(
        spark: SparkSession, tmp_path: Path, engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch scoring re-scores a date (keys 0-109: the stream's new keys 100-109 reached its input too) and is held
    between its read of the table and its commit; meanwhile the stream's MERGE adds keys 100-109 to that date. The
    replace must see that commit as a conflict and be done again on the new version: every key once, as the batch
    wrote it. Where each engine reads: delta-spark when its transaction starts, before the Spark job (held inside
    a task of that job); embedded when it lists the partition's files, right before its commit (held at the
    `delta.before_commit` failpoint)."""
    from pyspark.sql import functions as F

    from pipelines.core import failpoints
    from pipelines.core.delta import DeltaStore
    from pipelines.stages.score.batch import ResolvedModel, replace_partitions, upsert_partitions

    day, point, points = date(2013, 6, 1), "score.between_read_and_commit", tmp_path / "failpoints"
    model = ResolvedModel("m", "1", "models:/m/1", "/1", "run", {})
    store = DeltaStore(spark, engine)
    path = str(tmp_path / "gold")
    store.write(_gold(spark, day, range(0, 100), "seed"), path, "overwrite", ["flight_date"])
    batch = _gold(spark, day, range(0, 110), "batch")
    if engine == "embedded":
        point = "delta.before_commit"
        monkeypatch.setenv(failpoints.ENV, f"{point}:wait")
        monkeypatch.setenv(failpoints.DIR_ENV, str(points))
    else:
        folder = str(points)

        @F.udf("string")
        def held(i: int, tag: str) -> str:
            if i == 0:
                failpoints.hold(point, folder)
            return tag

        batch = batch.withColumn("written_by", held("id", "written_by"))
    writer = HeldWriter(lambda: replace_partitions(store, path, batch, "flight_date", [day], model))
    writer.wait_at(points / point)
    upsert_partitions(store, path, _gold(spark, day, range(100, 110), "stream"), ["id"], "flight_date")
    failpoints.release(point, points)
    assert writer.join() == []
    gold = [(r.id, r.written_by) for r in spark.read.format("delta").load(path).collect()]  # Delta's own reader
    assert sorted(i for i, _ in gold) == list(range(0, 110)), sorted(i for i, _ in gold)[95:]  # each key once
    assert {tag for _, tag in gold} == {"batch"}
    assert [bool(h["metadata"].get("model")) for h in store.history(path)] == [True, False, False]  # stream, batch
