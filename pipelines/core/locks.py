"""A lock between processes on one machine: an fcntl lock on a file, held for the duration of a `with` block.

Used where two jobs started at the same moment in one workspace would otherwise race on a shared local file (the
packaged code in <workspace>/dist, the first creation of a sqlite tracking store).
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) until the block ends; waits for another holder.

    The kernel drops the lock when its holder exits, so a killed process never leaves it held."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
