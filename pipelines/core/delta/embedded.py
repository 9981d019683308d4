"""The embedded engine's write: Spark writes Parquet into a staging folder, the driver moves the files into the
table folder and commits them as one Delta transaction with delta-rs; a replace of partitions commits only on top
of commits that touched none of them (delta-spark's rule). Local paths only.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable, Schema
from deltalake.exceptions import CommitFailedError
from deltalake.transaction import AddAction, CommitProperties, RemoveAction, create_table_with_add_actions
from pyspark.sql import DataFrame
from pyspark.sql.pandas.types import to_arrow_schema

from pipelines.core.delta.conflicts import DeltaWriteError, PartitionConflict, replace_conflict
from pipelines.core.delta.log import (
    EMBEDDED_ENGINE_INFO,
    HIVE_NULL,
    _commit_actions,
    _commit_adding,
    _local,
    _partition_key,
    _rs_exists,
    _user_metadata_entry,
)
from pipelines.core.delta.staging import OWNER_SUFFIX, STAGING, _remove_if_empty, _write_owner, clean_staging
from pipelines.core.failpoints import pause
from pipelines.core.logs import LOG

Mode = Literal["append", "overwrite"]


def write_embedded(
    df: DataFrame,
    path: str,
    mode: Mode,
    partition_by: list[str],
    replace_partitions: list[dict[str, Any]] | None,
    metadata: dict[str, str] | None,
    max_records_per_file: int,
    fence: Callable[[], None],
) -> int:
    """Write `df` to the local table at `path` as one commit (DeltaStore.write's contract) and return the new
    version; `fence` runs right before the commit."""
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
        writer = df.write.mode("overwrite").option("maxRecordsPerFile", max_records_per_file)
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
        version = _commit(root, actions, mode, partition_by, replace_partitions, arrow_schema, metadata, fence)
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
    root: Path,
    actions: list[AddAction],
    mode: Mode,
    partition_by: list[str],
    replace_partitions: list[dict[str, Any]] | None,
    arrow_schema: pa.Schema,
    metadata: dict[str, str] | None,
    fence: Callable[[], None],
) -> int:
    props = CommitProperties(custom_metadata={**EMBEDDED_ENGINE_INFO, **_user_metadata_entry(metadata)})
    schema = Schema.from_arrow(arrow_schema)
    exists = _rs_exists(str(root))
    if not exists or (mode == "overwrite" and replace_partitions is None):
        # CREATE, or CREATE OR REPLACE: one commit that may also change the schema and partitioning.
        pause("delta.before_commit")
        fence()
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
                               partition_by, metadata, fence)
    elif mode == "append" and not actions:
        return dt.version()
    else:
        pause("delta.before_commit")
        fence()
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
