"""DeltaStore: read, write and inspect Delta tables by path with one engine, delta-spark or embedded; `merge_rows`
upserts on either.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from deltalake import DeltaTable
from deltalake.transaction import CommitProperties
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema
from pyspark.sql.types import StructType

from pipelines.core import files
from pipelines.core.delta.conflicts import DeltaWriteError
from pipelines.core.delta.embedded import Mode, write_embedded
from pipelines.core.delta.log import (
    EMBEDDED_ENGINE_INFO,
    _column_values,
    _data_files,
    _history_entry,
    _local,
    _logged_files,
    _rs_exists,
    _user_metadata_entry,
)
from pipelines.core.delta.staging import clean_staging
from pipelines.core.failpoints import pause
from pipelines.core.session import DELTA_EXTENSION, NO_DELTA_JARS, delta_jar_dir, has_delta_classes

ENGINES = ("delta-spark", "embedded")

USER_METADATA_CONF = "spark.databricks.delta.commitInfo.userMetadata"

RETENTION_CHECK_CONF = "spark.databricks.delta.retentionDurationCheck.enabled"

LISTING_PARALLELISM_CONF = "spark.sql.sources.parallelPartitionDiscovery.parallelism"


@dataclass(frozen=True)
class Maintenance:
    """What `DeltaStore.maintain` did to one table."""

    version_before: int
    version_after: int
    files_compacted: int  # small files rewritten into fewer (now unreferenced, until vacuumed)
    files_added: int  # the files compaction wrote
    files_removed: int  # data files deleted: vacuumed, and a dead writer's uncommitted files
    bytes_removed: int
    staging_removed: int  # staging folders of dead embedded writers


def delta_spark_ready(spark: SparkSession) -> bool:
    """True when the session can run the delta-spark engine: Delta classes loaded and the extension enabled."""
    return has_delta_classes(spark) and DELTA_EXTENSION in spark.conf.get("spark.sql.extensions", "")


class DeltaStore:
    """Read, write and inspect Delta tables by path with one engine: delta-spark or embedded (auto: the first
    when the session supports it)."""

    def __init__(
        self, spark: SparkSession, engine: str = "auto", max_records_per_file: int = 2_000_000
    ) -> None:
        self.spark = spark
        if engine == "auto":
            engine = "delta-spark" if delta_spark_ready(spark) else "embedded"
        if engine not in ENGINES:
            raise ValueError(f"storage.engine must be auto, delta-spark or embedded, got {engine!r}")
        if engine == "delta-spark" and not delta_spark_ready(spark):
            raise RuntimeError("the session has no Delta classes or extension. "
                               + NO_DELTA_JARS.format(where=delta_jar_dir()))
        self.engine = engine
        self.max_records_per_file = max_records_per_file
        self.fence: Callable[[], None] | None = None

    def fenced(self, check: Callable[[], None]) -> DeltaStore:
        """This store with a fence: every commit (write, delete, merge) first runs `check`, right before the commit,
        and commits nothing when it raises (a lease holder that lost its lease, see pipelines.core.lease)."""
        out = copy.copy(self)
        out.fence = check
        return out

    def _fence(self) -> None:
        if self.fence is not None:
            self.fence()

    def _spark_table(self, path: str) -> Any:
        from delta.tables import DeltaTable as SparkDeltaTable

        return SparkDeltaTable.forPath(self.spark, path)

    # ---- inspection -------------------------------------------------------------------------------------------
    def exists(self, path: str) -> bool:
        """True when `path` holds a Delta table."""
        if self.engine == "delta-spark":
            from delta.tables import DeltaTable as SparkDeltaTable

            return bool(SparkDeltaTable.isDeltaTable(self.spark, path))
        return _rs_exists(_local(path))

    def version(self, path: str) -> int | None:
        """Latest committed version, or None when there is no table."""
        if self.engine == "delta-spark":
            if not self.exists(path):
                return None
            return int(self._spark_table(path).history(1).select("version").head()[0])
        try:
            return DeltaTable(_local(path)).version()
        except Exception:
            return None

    def history(self, path: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Commit history, newest first: version, timestamp (ms), operation, operationParameters, userMetadata
        (the raw string) and metadata (the dict a write's `metadata=` recorded; {} when none)."""
        if not self.exists(path):
            raise FileNotFoundError(f"no Delta table at {path}")
        if self.engine == "delta-spark":
            rows = (self._spark_table(path).history(limit)
                    .select("version", F.unix_millis("timestamp").alias("timestamp"), "operation",
                            "operationParameters", "userMetadata").collect())
            raw = [r.asDict() for r in rows]
        else:
            raw = DeltaTable(_local(path)).history(limit)
        return [_history_entry(h) for h in raw]

    def partition_columns(self, path: str) -> list[str]:
        """The table's partition columns, in order."""
        if self.engine == "delta-spark":
            return list(self._spark_table(path).detail().select("partitionColumns").head()[0])
        return list(DeltaTable(_local(path)).metadata().partition_columns)

    def schema(self, path: str) -> StructType:
        """The table's schema at its latest version, as Spark types."""
        if self.engine == "delta-spark":
            return self.read(path).schema
        return from_arrow_schema(pa.schema(DeltaTable(_local(path)).schema().to_arrow()))

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
        return write_embedded(df, path, mode, partition_by, replace_partitions, metadata, self.max_records_per_file,
                              self._fence)

    def delete_where(self, path: str, column: str, values: list[str], metadata: dict[str, str] | None = None) -> int:
        """Delete the rows whose string `column` is one of `values`, as one commit; returns the rows deleted.

        Used to roll back the rows of an ingest run that never recorded itself in the ingest log.
        """
        if not values or not self.exists(path):
            return 0
        if self.engine == "delta-spark":
            condition = F.col(column).isin(values)
            n = self.read(path).filter(condition).count()
            if n:
                self._fence()
                with _user_metadata(self.spark, metadata):
                    self._spark_table(path).delete(condition)
            return n
        quoted = ", ".join("'" + v.replace("'", "''") + "'" for v in values)
        props = CommitProperties(custom_metadata={**EMBEDDED_ENGINE_INFO, **_user_metadata_entry(metadata)})
        dt = DeltaTable(_local(path))
        self._fence()
        metrics = dt.delete(f"{column} IN ({quoted})", commit_properties=props)
        return int(metrics.get("num_deleted_rows", 0))

    def maintain(self, path: str, retention_hours: int, check_retention: bool = True) -> Maintenance:
        """Compact small files, then vacuum: delete data files no version within `retention_hours` references and
        untracked files (a killed writer's) older than that, plus dead embedded writers' staging. Readers of the
        latest version see the same rows; time travel to versions older than the retention stops working."""
        staging = clean_staging(path)
        before = _data_files(path)
        version_before = self.version(path)
        assert version_before is not None, f"no Delta table at {path}"
        if self.engine == "delta-spark":
            metrics = self._spark_table(path).optimize().executeCompaction().select("metrics.*").head().asDict()
            # VACUUM lists the folder in spark.sql.sources.parallelPartitionDiscovery.parallelism tasks (10,000 by
            # default: minutes of empty tasks on a small machine); a few per core is enough.
            listing = str(4 * self.spark.sparkContext.defaultParallelism)
            with _session_conf(self.spark, {RETENTION_CHECK_CONF: str(check_retention).lower(),
                                            LISTING_PARALLELISM_CONF: listing}):
                self._spark_table(path).vacuum(float(retention_hours))
        else:
            props = CommitProperties(custom_metadata=EMBEDDED_ENGINE_INFO)
            metrics = DeltaTable(_local(path)).optimize.compact(commit_properties=props)
            DeltaTable(_local(path)).vacuum(retention_hours, dry_run=False, enforce_retention_duration=check_retention,
                                            full=True, commit_properties=props)
        after = _data_files(path)
        gone = set(before) - set(after)
        version_after = self.version(path)
        assert version_after is not None
        return Maintenance(version_before, version_after, int(metrics["numFilesRemoved"]),
                           int(metrics["numFilesAdded"]), len(gone) + staging.files,
                           sum(before[f] for f in gone) + staging.bytes, staging.folders)

    def remove_dead_files(self, path: str, column: str, runs: list[str]) -> tuple[int, int]:
        """Delete the data files in table `path` that no version references and whose every row has `column` in
        `runs` (runs proven dead, whose writers will never commit them); return (files, bytes) removed.

        That is what a writer killed or failed before its commit left in the table folder: delta-spark's tasks
        write there directly, and the embedded engine moves files there before its commit. "No version references"
        means no add or remove in the log (JSON commits, checkpoints) names the file, so time travel loses nothing.
        Left alone: files with rows of any other run (a live writer's, maintain's compaction) and files whose
        Parquet footer cannot be read (still being written by someone, or cut short by the kill; they hold no
        readable rows and VACUUM removes them after the retention). Either engine, local or HDFS; fenced."""
        wanted = set(runs)
        fs, root = files.filesystem(path)
        root = root.rstrip("/")
        if not wanted or not fs.isdir(root):  # a folder without a log yet: the dead run's write was its first
            return 0, 0
        logged = _logged_files(fs, root)
        removed = size = 0
        for rel, n_bytes in _data_files(path).items():
            if rel in logged:
                continue
            values = _column_values(fs, f"{root}/{rel}", column)
            if values and values <= wanted:
                self._fence()
                fs.rm_file(f"{root}/{rel}")
                removed, size = removed + 1, size + n_bytes
        return removed, size

    def _check_compatible(
        self,
        df: DataFrame,
        path: str,
        partition_by: list[str],
        mode: Mode,
        replace_partitions: list[dict[str, Any]] | None,
    ) -> list[str]:
        table_parts = self.partition_columns(path)
        full_overwrite = mode == "overwrite" and replace_partitions is None
        if partition_by and partition_by != table_parts and not full_overwrite:
            raise ValueError(f"{path}: table is partitioned by {table_parts}, write asked for {partition_by}")
        if not full_overwrite:
            new, old = _shape(df.schema), _shape(self.schema(path))
            if new != old:
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
        replace_nothing = replace_partitions is not None and not replace_partitions
        writer = (df.write.format("delta").mode("append" if replace_nothing else mode)
                  .option("maxRecordsPerFile", self.max_records_per_file))
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        if replace_partitions:
            writer = writer.option("replaceWhere", _predicate(replace_partitions))
        elif mode == "overwrite" and not replace_nothing:
            writer = writer.option("overwriteSchema", "true")
        if metadata:
            writer = writer.option("userMetadata", _user_metadata_entry(metadata)["userMetadata"])
        self._fence()  # delta-spark commits inside save, after its job: the lease also cancels that job when lost
        try:
            writer.save(path)
        except Exception as e:
            raise DeltaWriteError(f"write to {path} failed; table left at its previous version: {e}") from e
        pause("delta.after_commit")
        version = self.version(path)
        assert version is not None
        return version


def _predicate(partitions: list[dict[str, Any]]) -> str:
    def lit(v: Any) -> str:
        return "NULL" if v is None else f"'{str(v).replace(chr(39), chr(39) * 2)}'"

    ors = [" AND ".join(f"`{k}` <=> {lit(v)}" for k, v in p.items()) for p in partitions]
    return " OR ".join(f"({o})" for o in ors)


def _shape(schema: StructType) -> list[tuple[str, str]]:
    """Column names and types, without nullability (what must match for an append or partition overwrite)."""
    return [(f.name, f.dataType.simpleString()) for f in schema.fields]


def _show(shape: list[tuple[str, str]]) -> str:
    return ", ".join(f"{name}:{kind}" for name, kind in shape)


@contextmanager
def _session_conf(spark: SparkSession, conf: dict[str, str]) -> Iterator[None]:
    """Set session conf inside the block, then restore (or unset) what was there before."""
    previous = {k: spark.conf.get(k, None) for k in conf}
    for k, v in conf.items():
        spark.conf.set(k, v)
    try:
        yield
    finally:
        for k, v in previous.items():
            if v is None:
                spark.conf.unset(k)
            else:
                spark.conf.set(k, v)


@contextmanager
def _user_metadata(spark: SparkSession, metadata: dict[str, str] | None) -> Iterator[None]:
    """Record `metadata` in the userMetadata of the delta-spark commits made inside the block."""
    if not metadata:
        yield
        return
    previous = spark.conf.get(USER_METADATA_CONF, None)
    spark.conf.set(USER_METADATA_CONF, _user_metadata_entry(metadata)["userMetadata"])
    try:
        yield
    finally:
        if previous is None:
            spark.conf.unset(USER_METADATA_CONF)
        else:
            spark.conf.set(USER_METADATA_CONF, previous)


def merge_rows(store: DeltaStore, df: DataFrame, path: str, keys: list[str], partition_by: list[str] | None = None,
               metadata: dict[str, str] | None = None, update: bool = True) -> int:
    """Upsert `df` into the table by `keys` as one transactional MERGE (rows with a known key replaced, new keys
    added), on either engine; returns the new version. The MERGE reads the table inside its own transaction, so
    a concurrent commit to the rows it touches makes it fail as a conflict instead of writing over them with a
    stale read. Creates the table (partitioned by `partition_by`) when there is none. With `update=False` rows
    whose key the table already holds are left as they are (insert only): `df` may then hold several rows per
    key, and applying the same rows again adds nothing."""
    if not store.exists(path):
        return store.write(df, path, "append", partition_by)
    on = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
    if store.engine == "delta-spark":
        store._fence()
        with _user_metadata(store.spark, metadata):
            merge = store._spark_table(path).alias("t").merge(df.alias("s"), on)
            (merge.whenMatchedUpdateAll() if update else merge).whenNotMatchedInsertAll().execute()
        version = store.version(path)
        assert version is not None
        return version
    root = _local(path)
    dt = DeltaTable(root)
    target = pa.schema(dt.schema().to_arrow())
    source = df.toArrow().select(target.names).cast(target)
    props = CommitProperties(custom_metadata={**EMBEDDED_ENGINE_INFO, **_user_metadata_entry(metadata)})
    store._fence()
    merge = dt.merge(source, on.replace("<=>", "="), source_alias="s", target_alias="t", commit_properties=props)
    (merge.when_matched_update_all() if update else merge).when_not_matched_insert_all().execute()
    return DeltaTable(root).version()
