"""The landing zone's completeness rule, shared by ingest and the streaming scorer: which listed files are
complete deliveries that may be read.

A producer of file drops either writes a file under a name readers ignore and renames it when complete (what
`hdfs dfs -put`, rsync, Flume and NiFi do), or writes it without pausing; readers then take a file only once
- its name, and the names of the folders below the source's own folder, do not start with `.` or `_` and do
  not end in `._COPYING_` (hdfs dfs -put, -cp) or `.tmp`: writers' names while copying, ignored and counted;
- its size and modification time stayed unchanged for `ingest.settle_s` seconds, as the reader observed them
  itself: two observations that far apart on the reader's own monotonic clock, so no clock of another host (an
  NFS server, the NameNode) is ever compared with the reader's.
A file not settled yet is deferred to the next run (counted and reported, never recorded as handled).

The names rule is what producers on HDFS must follow: a file HDFS still has open for writing reports only its
completed blocks' length and its creation time, so size and time can stay unchanged while it is being written.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote

from pipelines.core.files import FileInfo, to_uri

WRITER_PREFIXES = (".", "_")
WRITER_SUFFIXES = ("._COPYING_", ".tmp")
GLOB_CHARS = set("*?[{")


def literal_folder(pattern: str) -> int:
    """How many leading folders of a landing glob are spelled out (no glob character): `flights/*.csv` -> 1,
    `img/**` -> 1, `*.csv` -> 0. Those folders are the source's own, named by configuration, so the writers'
    names rule never applies to them."""
    parts = pattern.split("/")[:-1]
    n = 0
    for part in parts:
        if GLOB_CHARS & set(part):
            break
        n += 1
    return n


def writer_name(relative: str, own_folders: int = 0) -> bool:
    """True when the path `relative` (below the landing zone) is a name writers use while copying: a hidden or
    `_` name below the source's `own_folders`, or a file name ending in `._COPYING_` or `.tmp`."""
    parts = relative.strip("/").split("/")
    return (any(p.startswith(WRITER_PREFIXES) for p in parts[own_folders:])
            or parts[-1].endswith(WRITER_SUFFIXES))


def _path(uri: str) -> str:
    """The path part of a URI (scheme and authority removed; a listing's URIs are not percent-encoded)."""
    return re.sub(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/]*", "", uri)


def split_writer_names(files: list[FileInfo], zone: str, pattern: str) -> tuple[list[FileInfo], list[FileInfo]]:
    """(files to consider, files under writers' names) of a listing of the glob `pattern` under the landing
    zone `zone` (a path or URI)."""
    prefix, own = unquote(_path(to_uri(zone))).rstrip("/") + "/", literal_folder(pattern)
    keep: list[FileInfo] = []
    ignored: list[FileInfo] = []
    for f in files:
        path = _path(f.uri)
        relative = path[len(prefix):] if path.startswith(prefix) else path.rsplit("/", 1)[-1]
        (ignored if writer_name(relative, own) else keep).append(f)
    return keep, ignored


@dataclass
class Settling:
    """Observations of landing files over time, on the observer's own monotonic clock: `observe` returns the files
    whose size and modification time are unchanged since they were first seen so, at least `settle_s` ago."""

    settle_s: float
    clock: Callable[[], float] = time.monotonic
    seen: dict[str, tuple[int, int, float]] = field(default_factory=dict)  # uri -> size, mtime, first seen so

    def observe(self, files: list[FileInfo]) -> list[FileInfo]:
        """Record this listing of the files being watched; return those that have settled. A file missing from
        the listing is forgotten (removed: if it comes back, it is watched afresh)."""
        now = self.clock()
        listed = {f.uri for f in files}
        self.seen = {u: s for u, s in self.seen.items() if u in listed}
        settled = []
        for f in files:
            size, mtime, since = self.seen.get(f.uri, (-1, -1, now))
            if (size, mtime) != (f.size, f.mtime_ms):
                since = now
                self.seen[f.uri] = (f.size, f.mtime_ms, since)
            if now - since >= self.settle_s:
                settled.append(f)
        return settled

    def forget(self, uris: list[str]) -> None:
        """Stop watching files that were taken."""
        for u in uris:
            self.seen.pop(u, None)
