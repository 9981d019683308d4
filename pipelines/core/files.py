"""Landing-zone file access on the driver (listing, sizes, first bytes) through fsspec: local, HDFS or object stores."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import fsspec


@dataclass(frozen=True)
class FileInfo:
    """A landed file as Spark names it (a URI), with the size and modification time that identify a delivery."""

    uri: str
    size: int
    mtime_ms: int


def to_uri(path: str) -> str:
    """Local paths become file:// URIs (as Spark reports them in _metadata.file_path); URIs pass through."""
    return path if "://" in path else Path(path).resolve().as_uri()


def list_files(base: str, pattern: str) -> list[FileInfo]:
    """Files under `base` matching the glob `pattern`, sorted by URI."""
    uri = to_uri(base).rstrip("/") + "/" + pattern
    fs, root = fsspec.core.url_to_fs(uri)
    out = []
    for p in sorted(fs.glob(root)):
        info = fs.info(p)
        if info.get("type") != "file":
            continue
        mtime = info.get("mtime") or info.get("LastModified") or 0
        mtime_ms = int((mtime.timestamp() if hasattr(mtime, "timestamp") else float(mtime)) * 1000)
        full = fs.unstrip_protocol(p)
        out.append(FileInfo(to_uri(full[len("file://") :]) if full.startswith("file://") else full,
                            int(info["size"]), mtime_ms))
    return out


def head(uri: str, n: int) -> bytes:
    """The first `n` bytes of a file."""
    with fsspec.open(uri, "rb") as f:
        return f.read(n)
