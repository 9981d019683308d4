"""Concurrent writers. Two jobs may commit to one table at the same moment (batch scoring replacing a date while a
stream upserts into it); Delta's optimistic concurrency rejects the commit that lost the race: delta-spark raises a
Concurrent*Exception, delta-rs a CommitFailedError, the embedded replace a PartitionConflict. Such a write is done
again from the start (re-read, recompute, recommit), a bounded number of times, never dropped.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import unquote

from pipelines.core.delta.log import _partition_key
from pipelines.core.logs import LOG

T = TypeVar("T")


class DeltaWriteError(RuntimeError):
    """A write that could not be committed; the table is left at its previous version."""


class PartitionConflict(DeltaWriteError):
    """An embedded replace of partitions lost the race with a commit that touched those partitions."""


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
