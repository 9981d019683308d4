"""Delta storage: append, overwrite, partition overwrite, time travel, history, atomicity; readable by delta-rs."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, QueryBuilder
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipelines.core.delta import DeltaStore, DeltaWriteError

SCHEMA = "id int, year int, month int, name string"


def _rows(spark: SparkSession, rows: list[tuple]) -> object:
    return spark.createDataFrame(rows, SCHEMA)


def _ids(store: DeltaStore, path: str, version: int | None = None) -> list[int]:
    return sorted(r.id for r in store.read(path, version).collect())


def _delta_rs_count(path: str) -> int:
    res = QueryBuilder().register("t", DeltaTable(path)).execute("select count(*) as n from t")
    return pa.table(res.read_all()).to_pylist()[0]["n"]


def test_append_overwrite_time_travel(spark: SparkSession, store: DeltaStore, tmp_path: Path) -> None:
    path = str(tmp_path / "t")
    assert store.write(_rows(spark, [(1, 2013, 1, "a"), (2, 2013, 2, "b")]), path, "append", ["year", "month"]) == 0
    assert store.write(_rows(spark, [(3, 2013, 1, "c")]), path, "append") == 1
    assert _ids(store, path) == [1, 2, 3]
    assert store.write(_rows(spark, [(9, 2014, 1, None)]), path, "overwrite") == 2
    assert _ids(store, path) == [9]
    assert _ids(store, path, 0) == [1, 2] and _ids(store, path, 1) == [1, 2, 3]
    assert [h["version"] for h in store.history(path)] == [2, 1, 0]
    assert DeltaTable(path).metadata().partition_columns == ["year", "month"]
    assert _delta_rs_count(path) == 1
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
    assert _delta_rs_count(path) == 3
    again = store.write(_rows(spark, [(10, 2013, 1, "x"), (11, 2013, 1, "y")]), path, "overwrite",
                        replace_partitions=[{"year": 2013, "month": 1}])
    assert again == 2 and _ids(store, path) == [3, 10, 11]  # re-running a partition does not duplicate


def test_failed_write_leaves_previous_version(spark: SparkSession, store: DeltaStore, tmp_path: Path) -> None:
    path = str(tmp_path / "t")
    store.write(_rows(spark, [(1, 2013, 1, "a"), (2, 2013, 2, "b")]), path, "append", ["year", "month"])
    files_before = set(DeltaTable(path).file_uris())

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
    assert store.version(path) == 0
    assert _ids(store, path) == [1, 2]
    assert set(DeltaTable(path).file_uris()) == files_before
    assert not (tmp_path / "t" / "_staging").exists()


def test_failed_commit_removes_moved_files(spark: SparkSession, store: DeltaStore, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "t")
    store.write(_rows(spark, [(1, 2013, 1, "a")]), path, "append", ["year", "month"])

    def fail(*args: object, **kwargs: object) -> int:
        raise OSError("disk full while committing")

    monkeypatch.setattr(store, "_commit", fail)
    with pytest.raises(DeltaWriteError, match="disk full"):
        store.write(_rows(spark, [(2, 2013, 1, "b")]), path, "append")
    monkeypatch.undo()
    assert _ids(store, path) == [1] and store.version(path) == 0
    on_disk = sorted(str(p) for p in (tmp_path / "t").rglob("*.parquet"))
    assert on_disk == sorted(DeltaTable(path).file_uris())  # no orphan files left behind


def test_full_overwrite_may_change_schema(spark: SparkSession, store: DeltaStore, tmp_path: Path) -> None:
    path = str(tmp_path / "t")
    store.write(_rows(spark, [(1, 2013, 1, "a")]), path, "append", ["year", "month"])
    v = store.write(spark.createDataFrame([(5, 2.5)], "id int, score double"), path, "overwrite")
    assert v == 1 and DeltaTable(path).metadata().partition_columns == []
    assert [tuple(r) for r in store.read(path).collect()] == [(5, 2.5)]
    assert _ids(store, path, 0) == [1] and _delta_rs_count(path) == 1


def test_schema_mismatch_is_a_clear_error(spark: SparkSession, store: DeltaStore, tmp_path: Path) -> None:
    path = str(tmp_path / "t")
    store.write(_rows(spark, [(1, 2013, 1, "a")]), path, "append")
    other = spark.createDataFrame([(1, "x")], "id int, other string")
    with pytest.raises(ValueError, match="schema mismatch"):
        store.write(other, path, "append")
    with pytest.raises(FileNotFoundError, match="no Delta table"):
        store.read(str(tmp_path / "missing"))


@pytest.mark.skipif(not os.environ.get("DELTA_JARS"),
                    reason="delta-spark engine needs the Delta jars: set DELTA_JARS=/path/delta-spark.jar,"
                           "/path/delta-storage.jar (no Maven access here)")
def test_delta_spark_engine_same_protocol(spark: SparkSession, tmp_path: Path) -> None:
    ds = DeltaStore(spark, "delta-spark")
    path = str(tmp_path / "t")
    ds.write(_rows(spark, [(1, 2013, 1, "a"), (2, 2013, 2, "b")]), path, "append", ["year", "month"])
    ds.write(_rows(spark, [(5, 2013, 1, "z")]), path, "overwrite", replace_partitions=[{"year": 2013, "month": 1}])
    embedded = DeltaStore(spark, "embedded")
    assert _ids(embedded, path) == [2, 5]
    embedded.write(_rows(spark, [(7, 2013, 3, "q")]), path, "append")
    assert _ids(ds, path) == [2, 5, 7]
