"""Delta tables behind one small interface, with two engines that write the same Delta protocol.

- delta-spark (the default wherever its jars are present; see pipelines.core.session): Spark reads, writes and
  inspects tables through Delta Lake's own classes, on any file system Spark reaches (local, hdfs://, ...).
- embedded (`storage.engine=embedded`, machines without the jars): Spark writes the Parquet files into a staging
  folder, the driver moves them into the table folder and commits them as one Delta transaction with delta-rs.
  Until that commit the files are invisible to readers, so a write that fails part-way leaves the previous
  version readable and unchanged. Local paths only.

Crash safety (a writer killed at any point): a Delta version is one atomic log file, so readers always see exactly
the previous or the new version. What a killed writer leaves is litter, never a half-written version:
- embedded: each writer owns `_staging/<uuid>` and records itself (host, pid, process start) and, before it moves
  any file into the table folder, the files it will move, in `_staging/<uuid>.owner.json`. The next write and
  `maintain` (`clean_staging`) remove the staging folder of a writer that is no longer alive and the moved files
  that no commit ever added; a live writer's staging is never touched. An error after the commit landed keeps
  every file (the write counts as done); moved files are removed only when the log shows no commit added them.
- delta-spark: Spark writes the task files straight into the table folder, then commits in the JVM. A killed
  writer's files are untracked; `maintain` (VACUUM) deletes untracked files older than the retention, which is
  what keeps a live writer's files safe, so with the default retention they go a week later, unless a caller
  that can prove their writer dead (ingest, holding its lease) removes them at once (`remove_dead_files`).

Concurrent writers: a replace of partitions conflicts with any commit since its read that touched them, on both
engines (see `_commit_replace`), and is done again (`retry_on_conflict`). A store may be `fenced`: a check run
right before every commit, which a lease holder uses to commit nothing once it lost the lease.

Both engines record a write's `metadata` as JSON in the commit's userMetadata, where `history` (either engine)
returns it as `metadata`. `to_pandas` reads any of the tables into pandas with delta-rs, without Spark.
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import quote, unquote, urlparse

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable, Schema
from deltalake.exceptions import CommitFailedError
from deltalake.transaction import AddAction, CommitProperties, RemoveAction, create_table_with_add_actions
from fsspec import AbstractFileSystem
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema
from pyspark.sql.types import StructType

from pipelines.core import files
from pipelines.core.failpoints import pause
from pipelines.core.logs import LOG
from pipelines.core.session import DELTA_EXTENSION, NO_DELTA_JARS, delta_jar_dir, has_delta_classes

Mode = Literal["append", "overwrite"]
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
STAGING = "_staging"
OWNER_SUFFIX = ".owner.json"
FOREIGN_STALE_HOURS = 24.0  # a staging folder without a checkable owner (other host, no owner file) is stale then
ENGINES = ("delta-spark", "embedded")
EMBEDDED_ENGINE_INFO = {"engine": "spark-ml-pipeline/embedded"}
USER_METADATA_CONF = "spark.databricks.delta.commitInfo.userMetadata"
RETENTION_CHECK_CONF = "spark.databricks.delta.retentionDurationCheck.enabled"
LISTING_PARALLELISM_CONF = "spark.sql.sources.parallelPartitionDiscovery.parallelism"
T = TypeVar("T")


class DeltaWriteError(RuntimeError):
    """A write that could not be committed; the table is left at its previous version."""


class PartitionConflict(DeltaWriteError):
    """An embedded replace of partitions lost the race with a commit that touched those partitions."""


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


def _local(path: str) -> str:
    return path[len("file://") :] if path.startswith("file://") else path


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
        return self._write_embedded(df, path, mode, partition_by, replace_partitions, metadata)

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
        clean_staging(str(root))
        token = uuid.uuid4().hex
        staging, owner = root / STAGING / token, root / STAGING / f"{token}{OWNER_SUFFIX}"
        _write_owner(owner, [])
        moved: list[Path] = []
        committing = False
        try:
            writer = df.write.mode("overwrite").option("maxRecordsPerFile", self.max_records_per_file)
            if partition_by:
                writer = writer.partitionBy(*partition_by)
            writer.parquet(str(staging))
            arrow_schema = to_arrow_schema(df.schema)
            plan = [(file, file.relative_to(staging)) for file in sorted(staging.rglob("*.parquet"))]
            _write_owner(owner, [str(rel) for _, rel in plan])  # before any move: a dead writer's files are known
            actions = []
            for file, rel in plan:
                target = root / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(file, target)
                moved.append(target)
                actions.append(_add_action(target, rel))
            pause("delta.after_move")
            committing = True
            version = self._commit(root, actions, mode, partition_by, replace_partitions, arrow_schema, metadata)
        except Exception as e:
            if committing:
                try:
                    landed = _commit_adding(root, {str(f.relative_to(root)) for f in moved})
                except Exception as unknown:
                    raise DeltaWriteError(f"write to {path} failed and whether it committed is unknown ({unknown});"
                                          f" its files are kept: {e}") from e
                if landed is not None:
                    LOG.warning("write to %s committed version %d, then failed: %s", path, landed, e)
                    return landed
            for f in moved:
                f.unlink(missing_ok=True)
            raise DeltaWriteError(f"write to {path} failed; table left at its previous version: {e}") from e
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            owner.unlink(missing_ok=True)
            _remove_if_empty(root / STAGING)
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
        props = CommitProperties(custom_metadata={**EMBEDDED_ENGINE_INFO, **_user_metadata_entry(metadata)})
        schema = Schema.from_arrow(arrow_schema)
        exists = _rs_exists(str(root))
        if not exists or (mode == "overwrite" and replace_partitions is None):
            # CREATE, or CREATE OR REPLACE: one commit that may also change the schema and partitioning.
            pause("delta.before_commit")
            self._fence()
            create_table_with_add_actions(
                str(root), schema, actions, mode="overwrite" if exists else "error",
                partition_by=partition_by or None, commit_properties=props,
            )
            pause("delta.after_commit")
            return DeltaTable(str(root)).version()
        dt = DeltaTable(str(root))
        if replace_partitions is not None:
            removes = _removes_for(dt, replace_partitions)
            if not actions and not removes:
                return dt.version()
            pause("delta.before_commit")
            return _commit_replace(root, dt.version(), [*removes, *actions], replace_partitions, schema,
                                   partition_by, metadata, self._fence)
        elif mode == "append" and not actions:
            return dt.version()
        else:
            pause("delta.before_commit")
            self._fence()
            dt.create_write_transaction(actions, mode, schema, partition_by, commit_properties=props)
        pause("delta.after_commit")
        return DeltaTable(str(root)).version()


def _commit_replace(root: Path, read: int, actions: list[AddAction | RemoveAction],
                    partitions: list[dict[str, Any]], schema: Schema, partition_by: list[str],
                    metadata: dict[str, str] | None, fence: Callable[[], None], rebases: int = 100) -> int:
    """Commit a replace of `partitions` (the removes of their files as of version `read`, and the new files) as
    delta-spark's optimistic concurrency would: exactly on top of the version it read, or on top of later commits
    that touched none of those partitions. A later commit that added or removed a file in one of them (a stream's
    MERGE that only added rows included; delta-rs would let that through) raises PartitionConflict, so the whole
    write is done again on the new version (retry_on_conflict) instead of leaving those rows beside the new ones."""
    base = read
    for _ in range(rebases):
        props = CommitProperties(custom_metadata={**EMBEDDED_ENGINE_INFO, **_user_metadata_entry(metadata)},
                                 max_commit_retries=0)  # commit exactly as version base + 1, or fail
        fence()
        try:
            DeltaTable(str(root), version=base).create_write_transaction(
                actions, "append", schema, partition_by, commit_properties=props)
            pause("delta.after_commit")
            return base + 1
        except CommitFailedError:
            latest = DeltaTable(str(root)).version()
            if latest == base:
                raise
        for version in range(base + 1, latest + 1):
            why = replace_conflict(_commit_actions(root, version), partitions)
            if why:
                raise PartitionConflict(f"{root}: version {version}, committed after version {read} that this "
                                        f"replace of partitions {partitions} read, {why}")
        base = latest
    raise PartitionConflict(f"{root}: other writers kept committing; gave up after {rebases} rebases")


def _commit_actions(root: Path, version: int) -> list[dict[str, Any]]:
    """The actions of one JSON commit; a commit that cannot be read counts as a metadata change (a conflict)."""
    try:
        text = (root / "_delta_log" / f"{version:020d}.json").read_text()
    except OSError:
        return [{"metaData": {}}]
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def replace_conflict(actions: list[dict[str, Any]], partitions: list[dict[str, Any]]) -> str | None:
    """Why a commit with `actions` conflicts with a concurrent replace of `partitions` (None when it does not):
    it changed the table's metadata or protocol, or it added or removed a file in one of those partitions (a
    file without partition values counts as in them)."""
    wanted = [_partition_key(p) for p in partitions]
    for action in actions:
        for kind in ("metaData", "protocol"):
            if kind in action:
                return f"changed the table's {kind}"
        for kind in ("add", "remove"):
            if kind not in action:
                continue
            values = action[kind].get("partitionValues")
            if values is None or _partition_key(values) in wanted:
                return f"{kind} of {unquote(action[kind]['path'])} in a partition being replaced"
    return None


@dataclass(frozen=True)
class StagingCleanup:
    """What `clean_staging` removed: dead writers' staging folders, and their moved files no commit added."""

    folders: int = 0
    files: int = 0
    bytes: int = 0


def _proc_start(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks) of a process from /proc, or None where there is no /proc entry."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], fields[19]


def _owner_record() -> dict[str, Any]:
    proc = _proc_start(os.getpid())
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": proc[1] if proc else None,
            "created": time.time()}


def _write_owner(owner: Path, files: list[str]) -> None:
    """Record this writer (and the files it is about to move into the table) in its staging owner file."""
    owner.parent.mkdir(parents=True, exist_ok=True)
    owner.write_text(json.dumps({**_owner_record(), "files": files}))


def _alive(pid: int, start: str | None) -> bool:
    """True while the process `pid` (started at `start`, when known) runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    proc = _proc_start(pid)
    if proc is None:
        return True
    state, started = proc
    return state != "Z" and (start is None or started == start)  # a zombie, or a new process with the old pid


def _stale(owner: dict[str, Any] | None, age_s: float) -> bool:
    """A staging folder whose writer is gone: its process is dead on this host, or (owner on another host or
    unreadable) it is older than FOREIGN_STALE_HOURS."""
    if owner is None or owner.get("host") != socket.gethostname():
        return age_s > FOREIGN_STALE_HOURS * 3600
    return not _alive(int(owner["pid"]), owner.get("start"))


def _commits(root: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(version, action) for every action of the JSON commits still in the log, newest commit first."""
    log = root / "_delta_log"
    for commit in sorted(log.glob("*.json"), reverse=True) if log.is_dir() else []:
        for line in commit.read_text().splitlines():
            if line.strip():
                yield int(commit.stem), json.loads(line)


def _commit_adding(root: Path, rels: set[str]) -> int | None:
    """The version of the commit that added any of the files `rels` (relative paths), None when none did."""
    for version, action in _commits(root):
        if "add" in action and unquote(action["add"]["path"]) in rels:
            return version
    return None


def _ever_added(root: Path) -> set[str]:
    """Relative paths of every file a commit still in the log added, plus the latest version's (checkpoints)."""
    added = {unquote(a["add"]["path"]) for _, a in _commits(root) if "add" in a}
    if _rs_exists(str(root)):
        added |= {unquote(p) for p in pa.table(DeltaTable(str(root)).get_add_actions(flatten=False))["path"]
                  .to_pylist()}
    return added


def _data_files(path: str) -> dict[str, int]:
    """Size of every data file in the table folder (partition folders included; `_`/`.` entries are not data)."""
    fs, root = files.filesystem(path)
    root = root.rstrip("/")
    out = {}
    for file, info in fs.find(root, detail=True).items():
        rel = file[len(root) + 1 :]
        if not any(part.startswith(("_", ".")) for part in rel.split("/")):
            out[rel] = int(info["size"])
    return out


def _logged_files(fs: AbstractFileSystem, root: str) -> set[str]:
    """Relative paths of every file that an add or remove action in the table's log names (JSON commits, v2
    checkpoint manifests, Parquet checkpoints and their sidecars): the files some version references."""
    out: set[str] = set()

    def note(path: str | None) -> None:
        if path:
            rel = unquote(path)
            if "://" in rel:  # an absolute path: relative when it is in this table
                rel = urlparse(rel).path
            out.add(rel.removeprefix(root + "/") if rel.startswith("/") else rel)

    log = f"{root}/_delta_log"
    for file in fs.find(log) if fs.isdir(log) else []:
        if file.endswith(".json"):
            for line in fs.cat_file(file).decode().splitlines():
                action = json.loads(line) if line.strip() else {}
                for kind in ("add", "remove"):
                    note((action.get(kind) or {}).get("path"))
        elif file.endswith(".parquet"):
            with fs.open(file, "rb") as f:
                checkpoint = pq.ParquetFile(f)
                kinds = [k for k in ("add", "remove") if k in checkpoint.schema_arrow.names]
                table = checkpoint.read(columns=kinds)
            for kind in kinds:
                for action in table.column(kind).to_pylist():
                    note((action or {}).get("path"))
    return out


def _column_values(fs: AbstractFileSystem, file: str, column: str) -> set[Any]:
    """The distinct values of `column` in a Parquet file; empty when the file has no such column or cannot be
    read as Parquet (no footer yet: being written, or cut short)."""
    try:
        with fs.open(file, "rb") as f:
            data = pq.ParquetFile(f)
            if column not in data.schema_arrow.names:
                return set()
            return set(data.read(columns=[column]).column(0).unique().to_pylist())
    except Exception:
        return set()


def _remove_if_empty(folder: Path) -> None:
    with suppress(OSError):  # not empty (another writer's staging), or already gone
        folder.rmdir()


def clean_staging(path: str) -> StagingCleanup:
    """Remove what embedded writers that are no longer alive left in `<path>/_staging`: their staging folders, and
    the files they had moved into the table folder that no commit added. Live writers' staging is left alone."""
    root = Path(_local(path))
    folder = root / STAGING
    if "://" in str(root) or not folder.is_dir():
        return StagingCleanup()
    tokens = {e.name.removesuffix(OWNER_SUFFIX) for e in folder.iterdir()}
    folders = files = size = 0
    added: set[str] | None = None
    for token in sorted(tokens):
        owner_file, data = folder / f"{token}{OWNER_SUFFIX}", folder / token
        try:
            owner = json.loads(owner_file.read_text())
            age = time.time() - float(owner["created"])
        except (OSError, ValueError, KeyError, TypeError):
            owner = None
            try:
                age = time.time() - max(p.stat().st_mtime for p in (owner_file, data) if p.exists())
            except ValueError:  # both gone: its writer just finished
                continue
        if not _stale(owner, age):
            continue
        if added is None:
            added = _ever_added(root)
        for rel in (owner or {}).get("files", []):
            target = root / rel
            if rel not in added and target.is_file():
                size += target.stat().st_size
                target.unlink(missing_ok=True)
                files += 1
        shutil.rmtree(data, ignore_errors=True)
        owner_file.unlink(missing_ok=True)
        folders += 1
        LOG.info("removed the staging of a writer that is gone: %s", data)
    _remove_if_empty(folder)
    return StagingCleanup(folders, files, size)


def _add_action(file: Path, rel: Path) -> AddAction:
    parts = {}
    for d in rel.parent.parts:
        k, _, v = d.partition("=")
        parts[unquote(k)] = None if v == HIVE_NULL else unquote(v)
    st = file.stat()
    stats = json.dumps({"numRecords": pq.read_metadata(file).num_rows})
    return AddAction(quote(str(rel), safe="/="), st.st_size, parts, int(st.st_mtime * 1000), True, stats)


def _removes_for(dt: DeltaTable, partitions: list[dict[str, Any]]) -> list[RemoveAction]:
    wanted = [_partition_key(p) for p in partitions]
    adds = pa.table(dt.get_add_actions(flatten=False))
    now = int(time.time() * 1000)
    out = []
    for row in adds.to_pylist():
        pv = _partition_key(row.get("partition") or {})
        if pv in wanted:
            out.append(RemoveAction(row["path"], True, now, row["size_bytes"], pv))
    return out


def _partition_key(values: dict[str, Any]) -> dict[str, str | None]:
    """Partition values as the Delta log spells them (strings, booleans lower-case, null as None)."""
    return {k: None if v is None else str(v).lower() if isinstance(v, bool) else str(v) for k, v in values.items()}


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


def _rs_exists(path: str) -> bool:
    try:
        DeltaTable(path)
        return True
    except Exception:
        return False


def _user_metadata_entry(metadata: dict[str, str] | None) -> dict[str, str]:
    """A write's metadata as the commit's userMetadata (JSON), the field both engines record and read."""
    return {"userMetadata": json.dumps(metadata, sort_keys=True)} if metadata else {}


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


def _history_entry(commit: dict[str, Any]) -> dict[str, Any]:
    """One commit in the shape `DeltaStore.history` returns for both engines."""
    raw = commit.get("userMetadata")
    try:
        meta = json.loads(raw) if raw else {}
    except ValueError:
        meta = {}
    params = commit.get("operationParameters") or {}
    return {
        "version": int(commit["version"]),
        "timestamp": int(commit["timestamp"]),
        "operation": commit.get("operation"),
        "operationParameters": {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()},
        "userMetadata": raw,
        "metadata": {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {},
    }


def to_pandas(path: str, version: int | None = None, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a Delta table (partitioned or not, written by either engine) into pandas with delta-rs, no Spark.

    delta-rs gives the table's files, partition values and schema; each file is read with pyarrow.parquet, the
    partition columns are added with the table's types and every column is cast to the table's type. (Works
    around deltalake 1.6 + pyarrow 14, where DeltaTable.to_pandas fails on partitioned tables.) Local paths.
    """
    root = _local(path)
    dt = DeltaTable(root, version=version)
    schema = pa.schema(dt.schema().to_arrow())
    wanted = list(columns or schema.names)
    unknown = [c for c in wanted if c not in schema.names]
    if unknown:
        raise ValueError(f"{path}: no columns {unknown} (table columns: {schema.names})")
    target = pa.schema([schema.field(c) for c in wanted])
    parts = set(dt.metadata().partition_columns)
    tables = []
    for add in pa.table(dt.get_add_actions(flatten=False)).to_pylist():
        if add.get("deletionVector"):
            raise NotImplementedError(f"{path}: deletion vectors are not supported by to_pandas")
        rel = unquote(add["path"])
        file = _local(rel) if "://" in rel or rel.startswith("/") else os.path.join(root, rel)
        pf = pq.ParquetFile(file, coerce_int96_timestamp_unit="us")
        present = set(pf.schema_arrow.names)
        data = pf.read(columns=[c for c in wanted if c not in parts and c in present])
        values = add.get("partition") or {}
        cols = []
        for field in target:
            if field.name in parts:
                cols.append(pa.array([values.get(field.name)] * data.num_rows, type=field.type))
            elif field.name in present:
                cols.append(data.column(field.name))
            else:
                cols.append(pa.nulls(data.num_rows, type=field.type))
        tables.append(pa.Table.from_arrays(cols, names=wanted).cast(target))
    table = pa.concat_tables(tables) if tables else target.empty_table()
    return table.to_pandas()


# ---- concurrent writers -------------------------------------------------------------------------------------------
# Two jobs may commit to one table at the same moment (batch scoring replacing a date while a stream upserts into
# it). Delta's optimistic concurrency rejects the commit that lost the race: delta-spark raises a
# Concurrent*Exception (DeltaConcurrentModificationException and its kin), delta-rs a CommitFailedError. Such a
# write is done again from the start (re-read, recompute, recommit), a bounded number of times, never dropped.
CONFLICT_ERRORS = ("ConcurrentAppendException", "ConcurrentDeleteReadException", "ConcurrentDeleteDeleteException",
                   "ConcurrentTransactionException", "ConcurrentWriteException", "MetadataChangedException",
                   "ProtocolChangedException", "DeltaConcurrentModificationException", "CommitFailedError",
                   "DELTA_CONCURRENT_")


def is_conflict(error: BaseException) -> bool:
    """True when `error` (or what it wraps) is a commit that lost a race with another writer's commit."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = f"{type(e).__name__}: {e}"
        if isinstance(e, PartitionConflict) or any(name in text for name in CONFLICT_ERRORS):
            return True
        e = e.__cause__ or e.__context__
    return False


def retry_on_conflict(attempt: Callable[[], T], what: str, attempts: int = 8, pause_s: float = 0.2) -> T:
    """Run `attempt` (a whole read-compute-commit) and run it again when its commit conflicts with another
    writer's, up to `attempts` times with a growing, jittered pause; any other error is raised at once."""
    for n in range(1, attempts + 1):
        try:
            return attempt()
        except Exception as e:
            if not is_conflict(e):
                raise
            if n == attempts:
                raise DeltaWriteError(f"{what}: still conflicting with concurrent commits after {attempts} "
                                      f"attempts; the table keeps the other writers' versions: {e}") from e
            LOG.warning("%s: a concurrent commit won the race (attempt %d of %d); retrying", what, n, attempts)
            time.sleep(pause_s * n * (1 + random.random()))  # noqa: S311 - jitter, not security
    raise AssertionError("unreachable")


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
