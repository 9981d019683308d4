"""Delta tables behind one small interface, with two engines that write the same Delta protocol.

- delta-spark: used when the session has the Delta classes (clusters with --packages/--jars, Databricks).
- embedded: Spark writes the Parquet files into a staging folder, the driver moves them into the table folder and
  commits them as one Delta transaction with delta-rs. Until that commit the files are invisible to readers, so a
  write that fails part-way leaves the previous version readable and unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable, Schema
from deltalake.transaction import AddAction, CommitProperties, RemoveAction, create_table_with_add_actions
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

from pipelines.core.session import has_delta_classes

Mode = Literal["append", "overwrite"]
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
STAGING = "_staging"


class DeltaWriteError(RuntimeError):
    """A write that could not be committed; the table is unchanged."""


def _local(path: str) -> str:
    return path[len("file://") :] if path.startswith("file://") else path


class DeltaStore:
    """Read, write and inspect Delta tables by path, with whichever engine the session supports."""

    def __init__(
        self, spark: SparkSession, engine: str = "auto", max_records_per_file: int = 2_000_000
    ) -> None:
        self.spark = spark
        if engine == "auto":
            engine = "delta-spark" if has_delta_classes(spark) else "embedded"
        if engine == "delta-spark" and not has_delta_classes(spark):
            raise RuntimeError(
                "storage.engine=delta-spark but the session has no Delta classes: "
                "pass the Delta jars (DELTA_JARS, --packages io.delta:delta-spark_2.13:4.0.0) or use engine auto"
            )
        self.engine = engine
        self.max_records_per_file = max_records_per_file

    # ---- inspection -------------------------------------------------------------------------------------------
    @staticmethod
    def exists(path: str) -> bool:
        try:
            DeltaTable(_local(path))
            return True
        except Exception:
            return False

    @staticmethod
    def version(path: str) -> int | None:
        """Latest committed version, or None when there is no table."""
        try:
            return DeltaTable(_local(path)).version()
        except Exception:
            return None

    @staticmethod
    def history(path: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Commit history, newest first (version, timestamp, operation, parameters, custom metadata)."""
        return DeltaTable(_local(path)).history(limit)

    # ---- read -------------------------------------------------------------------------------------------------
    def read(self, path: str, version: int | None = None) -> DataFrame:
        """The table at its latest version, or at `version` (time travel)."""
        if not self.exists(path):
            raise FileNotFoundError(f"no Delta table at {path}")
        if self.engine == "delta-spark":
            reader = self.spark.read.format("delta")
            if version is not None:
                reader = reader.option("versionAsOf", version)
            return reader.load(path)
        dt = DeltaTable(_local(path), version=version)
        schema = from_arrow_schema(pa.schema(dt.schema().to_arrow()))
        files = dt.file_uris()
        if not files:
            return self.spark.createDataFrame([], schema)
        df = self.spark.read.schema(schema).option("basePath", _local(path)).parquet(*files)
        return df.select(*schema.fieldNames())

    # ---- write ------------------------------------------------------------------------------------------------
    def write(
        self,
        df: DataFrame,
        path: str,
        mode: Mode = "append",
        partition_by: list[str] | None = None,
        replace_partitions: list[dict[str, Any]] | None = None,
        metadata: dict[str, str] | None = None,
    ) -> int:
        """Write `df` as one commit and return the new version.

        mode append adds rows; overwrite replaces the table, or only the partitions listed in
        `replace_partitions` (each a dict of partition column -> value) when given.
        """
        if mode not in ("append", "overwrite"):
            raise ValueError(f"mode must be append or overwrite, got {mode!r}")
        partition_by = list(partition_by or [])
        missing = [c for c in partition_by if c not in df.columns]
        if missing:
            raise ValueError(f"partition columns {missing} are not in the DataFrame ({df.columns})")
        if replace_partitions is not None and mode != "overwrite":
            raise ValueError("replace_partitions needs mode='overwrite'")
        if self.exists(path):
            partition_by = self._check_compatible(df, path, partition_by, mode, replace_partitions)
        if self.engine == "delta-spark":
            return self._write_delta_spark(df, path, mode, partition_by, replace_partitions, metadata)
        return self._write_embedded(df, path, mode, partition_by, replace_partitions, metadata)

    def delete_where(self, path: str, column: str, values: list[str], metadata: dict[str, str] | None = None) -> int:
        """Delete the rows whose string `column` is one of `values`, as one commit; returns the rows deleted.

        Used to roll back the rows of an ingest run that never recorded itself in the ingest log.
        """
        if not values or not self.exists(path):
            return 0
        quoted = ", ".join("'" + v.replace("'", "''") + "'" for v in values)
        predicate = f"{column} IN ({quoted})"
        if self.engine == "delta-spark":
            n = self.read(path).filter(F.col(column).isin(values)).count()
            if n:
                self.spark.sql(f"DELETE FROM delta.`{path}` WHERE {predicate}")
            return n
        props = CommitProperties(custom_metadata={"engine": "spark-ml-pipeline/embedded", **(metadata or {})})
        metrics = DeltaTable(_local(path)).delete(predicate, commit_properties=props)
        return int(metrics.get("num_deleted_rows", 0))

    def _check_compatible(
        self,
        df: DataFrame,
        path: str,
        partition_by: list[str],
        mode: Mode,
        replace_partitions: list[dict[str, Any]] | None,
    ) -> list[str]:
        dt = DeltaTable(_local(path))
        table_parts = list(dt.metadata().partition_columns)
        full_overwrite = mode == "overwrite" and replace_partitions is None
        if partition_by and partition_by != table_parts and not full_overwrite:
            raise ValueError(f"{path}: table is partitioned by {table_parts}, write asked for {partition_by}")
        new = to_arrow_schema(df.schema)
        old = pa.schema(dt.schema().to_arrow())
        if not full_overwrite and [(f.name, str(f.type)) for f in new] != [(f.name, str(f.type)) for f in old]:
            raise ValueError(f"{path}: schema mismatch\n  table: {_show(old)}\n  write: {_show(new)}")
        if replace_partitions:
            bad = [p for p in replace_partitions if sorted(p) != sorted(table_parts)]
            if bad:
                raise ValueError(f"{path}: replace_partitions must name exactly {table_parts}, got {bad}")
        if full_overwrite and not partition_by:  # keep the layout unless the new schema cannot have it
            return table_parts if all(c in df.columns for c in table_parts) else []
        return partition_by or table_parts

    def _write_delta_spark(
        self,
        df: DataFrame,
        path: str,
        mode: Mode,
        partition_by: list[str],
        replace_partitions: list[dict[str, Any]] | None,
        metadata: dict[str, str] | None,
    ) -> int:
        writer = df.write.format("delta").mode(mode).option("maxRecordsPerFile", self.max_records_per_file)
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        if replace_partitions:
            writer = writer.option("replaceWhere", _predicate(replace_partitions))
        elif mode == "overwrite":
            writer = writer.option("overwriteSchema", "true")
        if metadata:
            writer = writer.option("userMetadata", json.dumps(metadata, sort_keys=True))
        writer.save(path)
        return DeltaTable(_local(path)).version()

    def _write_embedded(
        self,
        df: DataFrame,
        path: str,
        mode: Mode,
        partition_by: list[str],
        replace_partitions: list[dict[str, Any]] | None,
        metadata: dict[str, str] | None,
    ) -> int:
        root = Path(_local(path))
        if "://" in str(root):
            raise ValueError(f"the embedded Delta engine writes local paths only; use delta-spark for {path}")
        staging = root / STAGING / uuid.uuid4().hex
        moved: list[Path] = []
        try:
            writer = df.write.mode("overwrite").option("maxRecordsPerFile", self.max_records_per_file)
            if partition_by:
                writer = writer.partitionBy(*partition_by)
            writer.parquet(str(staging))
            arrow_schema = to_arrow_schema(df.schema)
            actions = []
            for file in sorted(staging.rglob("*.parquet")):
                rel = file.relative_to(staging)
                target = root / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(file, target)
                moved.append(target)
                actions.append(_add_action(target, rel))
            version = self._commit(root, actions, mode, partition_by, replace_partitions, arrow_schema, metadata)
        except Exception as e:
            for f in moved:
                f.unlink(missing_ok=True)
            raise DeltaWriteError(f"write to {path} failed; table left at its previous version: {e}") from e
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            if (root / STAGING).exists() and not any((root / STAGING).iterdir()):
                (root / STAGING).rmdir()
        return version

    def _commit(
        self,
        root: Path,
        actions: list[AddAction],
        mode: Mode,
        partition_by: list[str],
        replace_partitions: list[dict[str, Any]] | None,
        arrow_schema: pa.Schema,
        metadata: dict[str, str] | None,
    ) -> int:
        props = CommitProperties(custom_metadata={"engine": "spark-ml-pipeline/embedded", **(metadata or {})})
        schema = Schema.from_arrow(arrow_schema)
        exists = self.exists(str(root))
        if not exists or (mode == "overwrite" and replace_partitions is None):
            # CREATE, or CREATE OR REPLACE: one commit that may also change the schema and partitioning.
            create_table_with_add_actions(
                str(root), schema, actions, mode="overwrite" if exists else "error",
                partition_by=partition_by or None, commit_properties=props,
            )
            return DeltaTable(str(root)).version()
        dt = DeltaTable(str(root))
        if replace_partitions is not None:
            removes = _removes_for(dt, replace_partitions)
            if not actions and not removes:
                return dt.version()
            dt.create_write_transaction(
                [*removes, *actions], "append", schema, partition_by, commit_properties=props
            )
        elif mode == "append" and not actions:
            return dt.version()
        else:
            dt.create_write_transaction(actions, mode, schema, partition_by, commit_properties=props)
        return DeltaTable(str(root)).version()


def _add_action(file: Path, rel: Path) -> AddAction:
    parts = {}
    for d in rel.parent.parts:
        k, _, v = d.partition("=")
        parts[unquote(k)] = None if v == HIVE_NULL else unquote(v)
    st = file.stat()
    stats = json.dumps({"numRecords": pq.read_metadata(file).num_rows})
    return AddAction(quote(str(rel), safe="/="), st.st_size, parts, int(st.st_mtime * 1000), True, stats)


def _removes_for(dt: DeltaTable, partitions: list[dict[str, Any]]) -> list[RemoveAction]:
    wanted = [{k: None if v is None else str(v) for k, v in p.items()} for p in partitions]
    adds = pa.table(dt.get_add_actions(flatten=False))
    now = int(time.time() * 1000)
    out = []
    for row in adds.to_pylist():
        pv = {k: (None if v is None else _partition_str(v)) for k, v in (row.get("partition") or {}).items()}
        if pv in wanted:
            out.append(RemoveAction(row["path"], True, now, row["size_bytes"], pv))
    return out


def _partition_str(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def _predicate(partitions: list[dict[str, Any]]) -> str:
    def lit(v: Any) -> str:
        return "NULL" if v is None else f"'{str(v).replace(chr(39), chr(39) * 2)}'"

    ors = [" AND ".join(f"`{k}` <=> {lit(v)}" for k, v in p.items()) for p in partitions]
    return " OR ".join(f"({o})" for o in ors)


def _show(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name}:{f.type}" for f in schema)
