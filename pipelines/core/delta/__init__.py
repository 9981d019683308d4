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
engines (see embedded._commit_replace), and is done again (`retry_on_conflict`). A store may be `fenced`: a check run
right before every commit, which a lease holder uses to commit nothing once it lost the lease.

Both engines record a write's `metadata` as JSON in the commit's userMetadata, where `history` (either engine)
returns it as `metadata`. `to_pandas` reads any of the tables into pandas with delta-rs, without Spark.

Modules: store (DeltaStore, merge_rows: the front for both engines), embedded (the delta-rs commit protocol),
staging (embedded writers' ownership and crash clean-up), log (the table's log and folder read as files), reader
(to_pandas), conflicts (DeltaWriteError, PartitionConflict, retry_on_conflict). Import from here.
"""

from pipelines.core.delta.conflicts import (
    CONFLICT_ERRORS,
    DeltaWriteError,
    PartitionConflict,
    is_conflict,
    replace_conflict,
    retry_on_conflict,
)
from pipelines.core.delta.embedded import Mode
from pipelines.core.delta.reader import to_pandas
from pipelines.core.delta.staging import STAGING, StagingCleanup, clean_staging
from pipelines.core.delta.store import ENGINES, DeltaStore, Maintenance, delta_spark_ready, merge_rows

__all__ = ["CONFLICT_ERRORS", "ENGINES", "STAGING", "DeltaStore", "DeltaWriteError", "Maintenance", "Mode",
           "PartitionConflict", "StagingCleanup", "clean_staging", "delta_spark_ready", "is_conflict", "merge_rows",
           "replace_conflict", "retry_on_conflict", "to_pandas"]
