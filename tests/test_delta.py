"""Delta storage on both engines (delta-spark, embedded): append, overwrite, partition overwrite, time travel,
history, delete, atomicity; tables written by either engine read identically by the other and by to_pandas."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from deltalake import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.core.config import load_config
from pipelines.core.delta import ENGINES, DeltaStore, DeltaWriteError, to_pandas
from pipelines.core.session import DELTA_CONF, session_jars

SCHEMA = "id int, year int, month int, name string"


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store(spark: SparkSession, engine: str) -> DeltaStore:
    return DeltaStore(spark, engine)


def _rows(spark: SparkSession, rows: list[tuple]) -> DataFrame:
    return spark.createDataFrame(rows, SCHEMA)


def _ids(store: DeltaStore, path: str, version: int | None = None) -> list[int]:
    return sorted(r.id for r in store.read(path, version).collect())


def _referenced(path: str) -> set[str]:
    """The data files the table's latest version references, as delta-rs sees them."""
    return set(DeltaTable(path).file_uris())


def test_append_overwrite_time_travel(spark: SparkSession, store: DeltaStore, tmp_path: Path) -> None:
    path = str(tmp_path / "t")
    assert store.version(path) is None and not store.exists(path)
    assert store.write(_rows(spark, [(1, 2013, 1, "a"), (2, 2013, 2, "b")]), path, "append", ["year", "month"],
                       metadata={"run_id": "r0"}) == 0
    assert store.write(_rows(spark, [(3, 2013, 1, "c")]), path, "append", metadata={"run_id": "r1"}) == 1
    assert _ids(store, path) == [1, 2, 3] and store.exists(path)
    assert store.write(_rows(spark, [(9, 2014, 1, None)]), path, "overwrite") == 2
    assert _ids(store, path) == [9] and store.version(path) == 2
    assert _ids(store, path, 0) == [1, 2] and _ids(store, path, 1) == [1, 2, 3]
    history = store.history(path)
    assert [h["version"] for h in history] == [2, 1, 0]
    assert [h["metadata"] for h in history] == [{}, {"run_id": "r1"}, {"run_id": "r0"}]
    assert all(isinstance(h["timestamp"], int) and h["operation"] for h in history)
    assert [h["version"] for h in store.history(path, 1)] == [2]
    assert store.partition_columns(path) == ["year", "month"]
    assert DeltaTable(path).metadata().partition_columns == ["year", "month"]  # delta-rs agrees
    assert to_pandas(path)["id"].tolist() == [9] and sorted(to_pandas(path, 1)["id"]) == [1, 2, 3]
    back = store.read(path)
    assert back.schema.simpleString() == "struct<id:int,year:int,month:int,name:string>"


def test_partition_overwrite(spark: SparkSession, store: DeltaStore, tmp_path: Path) -> None:
    path = str(tmp_path / "t")
    store.write(_rows(spark, [(1, 2013, 1, "a"), (2, 2013, 2, "b"), (3, 2013, 3, "c")]), path, "append",
                ["year", "month"])
    v = store.write(_rows(spark, [(10, 2013, 1, "x"), (11, 2013, 1, "y")]), path, "overwrite",
                    replace_partitions=[{"year": 2013, "month": 1}, {"year": 2013, "month": 2}])
    assert v == 1
    assert _ids(store, path) == [3, 10, 11]  # month 2 replaced by nothing, month 3 untouched
    assert sorted(to_pandas(path)["id"]) == [3, 10, 11]
    again = store.write(_rows(spark, [(10, 2013, 1, "x"), (11, 2013, 1, "y")]), path, "overwrite",
                        replace_partitions=[{"year": 2013, "month": 1}])
    assert again == 2 and _ids(store, path) == [3, 10, 11]  # re-running a partition does not duplicate
    assert _ids(store, path, 1) == [3, 10, 11] and _ids(store, path, 0) == [1, 2, 3]


def test_empty_writes_make_no_commit(spark: SparkSession, store: DeltaStore, tmp_path: Path) -> None:
    path = str(tmp_path / "t")
    empty = _rows(spark, [])
    assert store.write(empty, path, "append", ["year", "month"]) == 0  # the first write creates the table
    assert store.exists(path) and _ids(store, path) == []
    store.write(_rows(spark, [(1, 2013, 1, "a")]), path, "append")
    assert store.write(empty, path, "append") == 1
    assert store.write(empty, path, "overwrite", replace_partitions=[]) == 1
    assert store.write(empty, path, "overwrite", replace_partitions=[{"year": 2099, "month": 1}]) == 1
    assert [h["version"] for h in store.history(path)] == [1, 0]
    assert store.write(empty, path, "overwrite", replace_partitions=[{"year": 2013, "month": 1}]) == 2
    assert _ids(store, path) == []


def test_delete_where(spark: SparkSession, store: DeltaStore, tmp_path: Path) -> None:
    path = str(tmp_path / "t")
    rows = [(i, 2013, 1 + i % 3, f"run-{i % 4}") for i in range(20)]
    store.write(_rows(spark, rows), path, "append", ["year", "month"])
    doomed = {"run-1", "run-3"}
    expected_deleted = sum(1 for r in rows if r[3] in doomed)
    assert store.delete_where(path, "name", sorted(doomed), {"run_id": "cleaner"}) == expected_deleted
    assert _ids(store, path) == [r[0] for r in rows if r[3] not in doomed]
    latest = store.history(path, 1)[0]
    assert latest["version"] == 1 and latest["operation"] == "DELETE"
    assert latest["metadata"] == {"run_id": "cleaner"}
    assert store.delete_where(path, "name", ["nobody's run"]) == 0 and store.version(path) == 1
    assert store.delete_where(path, "name", []) == 0 and store.version(path) == 1
    assert _ids(store, path, 0) == list(range(20))
    assert store.delete_where(str(tmp_path / "missing"), "name", ["run-0"]) == 0


def test_failed_write_leaves_previous_version(spark: SparkSession, store: DeltaStore, tmp_path: Path) -> None:
    path = str(tmp_path / "t")
    store.write(_rows(spark, [(1, 2013, 1, "a"), (2, 2013, 2, "b")]), path, "append", ["year", "month"])
    files_before = _referenced(path)

    @F.udf("string")
    def explode_on_7(i: int) -> str:
        if i == 7:
            raise ValueError("boom at row 7")
        return "ok"

    big = spark.range(0, 20, numPartitions=4).select(
        F.col("id").cast("int").alias("id"), F.lit(2013).alias("year"), F.lit(5).alias("month"),
        explode_on_7(F.col("id").cast("int")).alias("name"))
    with pytest.raises(DeltaWriteError, match="previous version"):
        store.write(big, path, "append")
    assert store.version(path) == 0 and [h["version"] for h in store.history(path)] == [0]
    assert _ids(store, path) == [1, 2] and sorted(to_pandas(path)["id"]) == [1, 2]
    assert _referenced(path) == files_before
    if store.engine == "embedded":  # nothing of the failed write is left on disk
        on_disk = {str(p) for p in (tmp_path / "t").rglob("*.parquet")}
        assert on_disk == files_before and not (tmp_path / "t" / "_staging").exists()


def test_failed_commit_removes_moved_files(spark: SparkSession, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Embedded engine: files moved into the table before a failed commit are removed again."""
    from pipelines.core.delta import embedded

    store = DeltaStore(spark, "embedded")
    path = str(tmp_path / "t")
    store.write(_rows(spark, [(1, 2013, 1, "a")]), path, "append", ["year", "month"])

    def fail(*args: object, **kwargs: object) -> int:
        raise OSError("disk full while committing")

    monkeypatch.setattr(embedded, "_commit", fail)
    with pytest.raises(DeltaWriteError, match="disk full"):
        store.write(_rows(spark, [(2, 2013, 1, "b")]), path, "append")
    monkeypatch.undo()
    assert _ids(store, path) == [1] and store.version(path) == 0
    on_disk = sorted(str(p) for p in (tmp_path / "t").rglob("*.parquet"))
    assert on_disk == sorted(_referenced(path))  # no orphan files left behind


def test_full_overwrite_may_change_schema(spark: SparkSession, store: DeltaStore, tmp_path: Path) -> None:
    path = str(tmp_path / "t")
    store.write(_rows(spark, [(1, 2013, 1, "a")]), path, "append", ["year", "month"])
    v = store.write(spark.createDataFrame([(5, 2.5)], "id int, score double"), path, "overwrite")
    assert v == 1 and store.partition_columns(path) == []
    assert DeltaTable(path).metadata().partition_columns == []
    assert [tuple(r) for r in store.read(path).collect()] == [(5, 2.5)]
    assert _ids(store, path, 0) == [1] and to_pandas(path).to_dict("records") == [{"id": 5, "score": 2.5}]


def test_schema_mismatch_is_a_clear_error(spark: SparkSession, store: DeltaStore, tmp_path: Path) -> None:
    path = str(tmp_path / "t")
    store.write(_rows(spark, [(1, 2013, 1, "a")]), path, "append", ["year", "month"])
    other = spark.createDataFrame([(1, "x")], "id int, other string")
    with pytest.raises(ValueError, match="schema mismatch"):
        store.write(other, path, "append")
    with pytest.raises(ValueError, match="partitioned by"):
        store.write(_rows(spark, [(2, 2013, 1, "b")]), path, "append", ["month"])
    with pytest.raises(ValueError, match="replace_partitions must name exactly"):
        store.write(_rows(spark, [(2, 2013, 1, "b")]), path, "overwrite", replace_partitions=[{"year": 2013}])
    assert store.version(path) == 0 and _ids(store, path) == [1]
    with pytest.raises(FileNotFoundError, match="no Delta table"):
        store.read(str(tmp_path / "missing"))


# ---- across engines ---------------------------------------------------------------------------------------------
WIDE = "id int, day date, region string, amount double, at timestamp, note string"
WIDE_ROWS = [
    (1, date(2013, 1, 1), "eu", 1.5, datetime(2013, 1, 1, 8, 30, tzinfo=UTC), "a"),
    (2, date(2013, 1, 1), "us", None, datetime(2013, 1, 1, 9, 0, tzinfo=UTC), None),
    (3, date(2013, 1, 2), None, 3.25, datetime(2013, 1, 2, 23, 59, 59, 123456, tzinfo=UTC), "c"),
    (4, date(2013, 1, 3), "eu", -4.0, None, "d'quote"),
]
REPLACED = (5, date(2013, 1, 2), "eu", 5.0, datetime(2013, 1, 2, 12, 0, tzinfo=UTC), "e")


def _write_wide(spark: SparkSession, store: DeltaStore, path: str) -> DataFrame:
    """A partitioned table (date and string partitions, a null partition value) in three commits: create,
    append, replace one date. Returns the DataFrame of the rows it should hold."""
    store.write(spark.createDataFrame(WIDE_ROWS[:2], WIDE), path, "append", ["day", "region"],
                metadata={"step": "create"})
    store.write(spark.createDataFrame(WIDE_ROWS[2:], WIDE), path, "append", metadata={"step": "append"})
    store.write(spark.createDataFrame([REPLACED], WIDE), path, "overwrite",
                replace_partitions=[{"day": "2013-01-02", "region": None}, {"day": "2013-01-02", "region": "eu"}],
                metadata={"step": "replace"})
    return spark.createDataFrame([*WIDE_ROWS[:2], WIDE_ROWS[3], REPLACED], WIDE)


@pytest.mark.parametrize("writer", ENGINES)
def test_written_by_either_engine_reads_identically(spark: SparkSession, tmp_path: Path, writer: str) -> None:
    path = str(tmp_path / "wide")
    expected_df = _write_wide(spark, DeltaStore(spark, writer), path)
    expected = sorted(tuple(r) for r in expected_df.collect())
    readers = {engine: DeltaStore(spark, engine) for engine in ENGINES}
    for engine, reader in readers.items():
        back = reader.read(path)
        assert back.schema.simpleString() == expected_df.schema.simpleString(), engine
        assert sorted(tuple(r) for r in back.collect()) == expected, engine
        assert sorted(r.id for r in reader.read(path, 0).collect()) == [1, 2], engine
        assert reader.partition_columns(path) == ["day", "region"], engine
        assert reader.version(path) == 2, engine
    histories = {engine: reader.history(path) for engine, reader in readers.items()}
    assert [(h["version"], h["metadata"]) for h in histories["delta-spark"]] == [
        (2, {"step": "replace"}), (1, {"step": "append"}), (0, {"step": "create"})]
    assert [(h["version"], h["operation"], h["metadata"]) for h in histories["embedded"]] == [
        (h["version"], h["operation"], h["metadata"]) for h in histories["delta-spark"]]
    # delta-spark reports the commit file's time, delta-rs the commitInfo time: the same commit, ms apart
    assert all(abs(a["timestamp"] - b["timestamp"]) < 5000 for a, b in zip(*histories.values(), strict=True))

    pdf = to_pandas(path)
    assert list(pdf.columns) == ["id", "day", "region", "amount", "at", "note"]
    got = sorted(pdf.astype(object).where(pdf.notna(), None).itertuples(index=False, name=None), key=lambda r: r[0])
    want = sorted([*WIDE_ROWS[:2], WIDE_ROWS[3], REPLACED], key=lambda r: r[0])
    assert [(r[0], r[1], r[2], r[3], r[5]) for r in got] == [(r[0], r[1], r[2], r[3], r[5]) for r in want]
    assert [None if r[4] is None else r[4].to_pydatetime() for r in got] == [r[4] for r in want]
    assert str(pdf["id"].dtype) == "int32" and str(pdf["at"].dtype).startswith("datetime64")
    assert sorted(to_pandas(path, version=1, columns=["id", "region"]).itertuples(index=False, name=None)) == [
        (1, "eu"), (2, "us"), (3, None), (4, "eu")]
    with pytest.raises(ValueError, match="no columns"):
        to_pandas(path, columns=["nope"])


def test_either_engine_continues_the_others_table(spark: SparkSession, tmp_path: Path) -> None:
    path = str(tmp_path / "t")
    ds, embedded = DeltaStore(spark, "delta-spark"), DeltaStore(spark, "embedded")
    ds.write(_rows(spark, [(1, 2013, 1, "a"), (2, 2013, 2, "b")]), path, "append", ["year", "month"])
    embedded.write(_rows(spark, [(5, 2013, 1, "z")]), path, "overwrite", replace_partitions=[{"year": 2013,
                                                                                              "month": 1}])
    ds.write(_rows(spark, [(7, 2013, 3, "q")]), path, "append")
    assert embedded.delete_where(path, "name", ["b"]) == 1
    assert _ids(ds, path) == _ids(embedded, path) == [5, 7] and sorted(to_pandas(path)["id"]) == [5, 7]
    assert ds.version(path) == embedded.version(path) == 3


def test_engine_choice(spark: SparkSession, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert DeltaStore(spark).engine == "delta-spark"  # the shared session has the project's jars
    assert {spark.conf.get(k) for k in DELTA_CONF} == set(DELTA_CONF.values())
    assert spark.conf.get("spark.databricks.delta.snapshotPartitions") == "2"  # local[2]: a task per core
    with pytest.raises(ValueError, match="storage.engine"):
        DeltaStore(spark, "parquet")
    project = session_jars(load_config("local", []))
    assert sorted(Path(j).name for j in project) == ["delta-spark_2.13-4.0.1.jar", "delta-storage-4.0.1.jar"]
    assert session_jars(load_config("local", ["storage.engine=embedded"])) == []
    monkeypatch.setenv("DELTA_JARS", ",".join(project))
    assert session_jars(load_config("local", ["storage.engine=delta-spark"])) == project
    monkeypatch.delenv("DELTA_JARS")
    monkeypatch.setenv("JARS_DIR", str(tmp_path))  # a machine without the jars
    assert session_jars(load_config("local", [])) == []  # auto: the embedded engine
    with pytest.raises(FileNotFoundError, match=r"bootstrap\.sh.*storage\.engine=embedded"):
        session_jars(load_config("local", ["storage.engine=delta-spark"]))


def test_replace_conflicts_with_any_commit_that_touched_its_partitions() -> None:
    """The embedded engine's conflict rule for a replace of partitions (no JVM): a later commit that added or
    removed a file in one of them, or changed metadata or protocol, conflicts; one that touched only other
    partitions does not."""
    from pipelines.core.delta import replace_conflict

    day = [{"flight_date": "2013-06-01", "flag": True}]

    def add(values: dict | None, kind: str = "add") -> dict:
        return {kind: {"path": "f.parquet", **({} if values is None else {"partitionValues": values})}}

    same, other = {"flight_date": "2013-06-01", "flag": "true"}, {"flight_date": "2013-06-02", "flag": "true"}
    assert replace_conflict([{"commitInfo": {}}, add(same)], day) == "add of f.parquet in a partition being replaced"
    assert replace_conflict([add(same, "remove")], day) == "remove of f.parquet in a partition being replaced"
    assert replace_conflict([add(None)], day)  # where a file belongs is unknown: assume the worst
    assert replace_conflict([{"metaData": {"id": "x"}}], day) == "changed the table's metaData"
    assert replace_conflict([{"protocol": {}}], day) == "changed the table's protocol"
    assert replace_conflict([{"commitInfo": {}}, add(other), add(other, "remove"), {"txn": {}}], day) is None
    assert replace_conflict([add({"flight_date": None, "flag": "false"})], [{"flight_date": None, "flag": False}])


def test_a_fenced_store_commits_nothing_once_its_fence_fails(spark: SparkSession, store: DeltaStore,
                                                             tmp_path: Path) -> None:
    """The fence (a lease holder's check) runs right before every commit: when it raises, no write, delete or
    merge commits, and no data file of the attempt is left in the table folder by the embedded engine."""
    from pipelines.core.delta import merge_rows
    from pipelines.core.lease import LeaseLost

    path = str(tmp_path / "t")
    store.write(_rows(spark, [(1, 2013, 1, "a")]), path, "append", ["year", "month"])
    files = {p for p in Path(path).rglob("*.parquet")}

    def lost() -> None:
        raise LeaseLost("taken over")

    fenced = store.fenced(lost)
    attempts = [lambda: fenced.write(_rows(spark, [(2, 2013, 1, "b")]), path, "append"),
                lambda: fenced.write(_rows(spark, [(3, 2013, 1, "c")]), path, "overwrite",
                                     replace_partitions=[{"year": 2013, "month": 1}]),
                lambda: fenced.write(_rows(spark, [(4, 2014, 1, "d")]), path, "overwrite"),
                lambda: fenced.delete_where(path, "name", ["a"]),
                lambda: merge_rows(fenced, _rows(spark, [(1, 2013, 1, "z")]), path, ["id"])]
    for attempt in attempts:
        with pytest.raises(Exception, match="taken over"):
            attempt()
    assert store.version(path) == 0 and [(r.id, r.name) for r in store.read(path).collect()] == [(1, "a")]
    if store.engine == "embedded":
        assert {p for p in Path(path).rglob("*.parquet")} == files
    assert store.write(_rows(spark, [(5, 2013, 1, "e")]), path, "append") == 1  # the store itself is not fenced


def test_remove_dead_files_takes_only_unreferenced_files_of_dead_runs(spark: SparkSession, store: DeltaStore,
                                                                      tmp_path: Path) -> None:
    """What a dead run left uncommitted goes; a file any version references (time travel), a file with another
    run's rows (a live writer's) and a file without a footer (being written) stay. Also before the table's first
    commit (the dead run's write would have created it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = "id int, year int, month int, _run_id string"
    path = str(tmp_path / "t")

    def plant(name: str, runs: list[str], folder: str = "year=2013/month=1") -> Path:
        f = Path(path) / folder / name
        f.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"id": list(range(len(runs))), "_run_id": runs}), f)
        return f

    first = plant("part-first.parquet", ["dead", "dead"])  # the dead run's write was the table's first
    size = first.stat().st_size
    assert store.remove_dead_files(path, "_run_id", ["dead"]) == (1, size) and not first.exists()
    store.write(spark.createDataFrame([(1, 2013, 1, "live"), (2, 2013, 1, "dead")], schema), path, "append",
                ["year", "month"])
    store.delete_where(path, "_run_id", ["dead"])  # rolled back: its file is referenced by version 0 only
    dead = [plant(f"part-dead-{i}.parquet", ["dead"], f"year=2013/month={i}") for i in (1, 2)]
    mixed = plant("part-mixed.parquet", ["dead", "live"])
    other = plant("part-other.parquet", ["writing"])
    cut = Path(path) / "year=2013" / "month=1" / "part-cut.parquet"
    cut.write_bytes(b"PAR1")
    in_log = {str(f) for f in Path(path).rglob("*.parquet")} - {str(f) for f in (*dead, mixed, other, cut)}
    sizes = sum(f.stat().st_size for f in dead)
    assert store.remove_dead_files(path, "_run_id", ["dead", "gone"]) == (2, sizes)
    assert {str(f) for f in Path(path).rglob("*.parquet")} == in_log | {str(mixed), str(other), str(cut)}
    assert [r.id for r in store.read(path).collect()] == [1] and store.read(path, 0).count() == 2
    assert store.remove_dead_files(path, "_run_id", []) == (0, 0)
