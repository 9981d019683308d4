"""The embedded engine's staging: each writer owns `_staging/<uuid>` and records itself (host, pid, process start)
and, before it moves any file into the table folder, the files it will move, in `_staging/<uuid>.owner.json`.
`clean_staging` (the next write, `maintain`) removes what writers that are no longer alive left: their staging
folders and the moved files no commit added. A live writer's staging is never touched.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.core.delta.log import _ever_added, _local
from pipelines.core.logs import LOG
from pipelines.core.procs import ProcessId

STAGING = "_staging"

OWNER_SUFFIX = ".owner.json"

FOREIGN_STALE_HOURS = 24.0  # a staging folder without a checkable owner (other host, no owner file) is stale then


@dataclass(frozen=True)
class StagingCleanup:
    """What `clean_staging` removed: dead writers' staging folders, and their moved files no commit added."""

    folders: int = 0
    files: int = 0
    bytes: int = 0


def _owner_record() -> dict[str, Any]:
    me = ProcessId.current()
    return {"host": me.host, "pid": me.pid, "start": me.start, "created": time.time()}


def _write_owner(owner: Path, files: list[str]) -> None:
    """Record this writer (and the files it is about to move into the table) in its staging owner file."""
    owner.parent.mkdir(parents=True, exist_ok=True)
    owner.write_text(json.dumps({**_owner_record(), "files": files}))


def _stale(owner: dict[str, Any] | None, age_s: float) -> bool:
    """A staging folder whose writer is gone: its process is dead on this host, or (owner on another host or
    unreadable) it is older than FOREIGN_STALE_HOURS."""
    if owner is None or owner.get("host") != socket.gethostname():
        return age_s > FOREIGN_STALE_HOURS * 3600
    return not ProcessId(owner["host"], int(owner["pid"]), owner.get("start")).alive()


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
