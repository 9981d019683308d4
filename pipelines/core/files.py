"""File access outside Spark (landing files, checkpoints, caches, models) through fsspec: local, HDFS or object
stores. HDFS goes through hdfs-native (pure Rust, reads HADOOP_CONF_DIR), so no libhdfs/JNI is needed on a node."""

from __future__ import annotations

import posixpath
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import fsspec
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem


@dataclass(frozen=True)
class FileInfo:
    """A landed file by URI (the file system's own name for it, not percent-encoded, so `head` and Spark can open
    it), with the size and modification time that identify a delivery."""

    uri: str
    size: int
    mtime_ms: int


def to_uri(path: str) -> str:
    """Local paths become file:// URIs (as Spark reports them in _metadata.file_path); URIs pass through."""
    return path if "://" in path else Path(path).resolve().as_uri()


def list_files(base: str, pattern: str) -> list[FileInfo]:
    """Files under `base` matching the glob `pattern`, sorted by URI. Names stay as the file system spells them
    (a space stays a space): a percent-encoded local URI would name another file to fsspec and to Spark."""
    uri = to_uri(base).rstrip("/") + "/" + pattern
    fs, root = fsspec.core.url_to_fs(uri)
    out = []
    for p in sorted(fs.glob(root)):
        info = fs.info(p)
        if info.get("type") != "file":
            continue
        mtime = info.get("mtime") or info.get("LastModified") or 0
        mtime_ms = int((mtime.timestamp() if hasattr(mtime, "timestamp") else float(mtime)) * 1000)
        out.append(FileInfo(fs.unstrip_protocol(p), int(info["size"]), mtime_ms))
    return out


def spark_input(uri: str) -> str:
    """A listed file's URI as a path for Spark's readers, which expand globs: glob characters are escaped so a
    file named `a[1].csv` is read as itself."""
    return re.sub(r"([\\\[\]{}*?])", r"\\\1", uri)


def from_spark_path(path: str) -> str:
    """A path as Spark reports it (_metadata.file_path, binaryFile `path`: `file:/x`, percent-encoded) -> the URI
    `list_files` names the file by."""
    return unquote(re.sub(r"^file:/+", "file:///", path))


def head(uri: str, n: int) -> bytes:
    """The first `n` bytes of a file."""
    with fsspec.open(uri, "rb") as f:
        return f.read(n)


def filesystem(uri: str) -> tuple[AbstractFileSystem, str]:
    """(file system, path in it) for a local path or URI."""
    return fsspec.core.url_to_fs(to_uri(uri))


def join(base: str, *parts: str) -> str:
    """`base`/`parts` for local paths and URIs alike."""
    return posixpath.join(base.rstrip("/"), *parts)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    return fs.cat_file(path)


def write_atomic(uri: str, data: bytes) -> None:
    """Write `data` to a temporary name beside `uri`, then rename it over `uri`: readers see old or new, never half."""
    fs, path = filesystem(uri)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    fs.pipe_file(tmp, data)
    if not isinstance(fs, LocalFileSystem) and fs.exists(path):
        fs.rm_file(path)  # HDFS rename does not replace an existing file
    fs.mv(tmp, path)


def remove(uri: str, recursive: bool = False) -> None:
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


def listdir(uri: str) -> list[str]:
    """Names (not paths) of the entries in folder `uri`; empty when it does not exist."""
    fs, path = filesystem(uri)
    if not fs.isdir(path):
        return []
    return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))


def copy_to_local(uri: str, dst: str) -> str:
    """Copy the file or folder `uri` to the local folder `dst` (for libraries that read local paths only)."""
    fs, path = filesystem(uri)
    fs.get(path.rstrip("/") + "/" if fs.isdir(path) else path, dst.rstrip("/") + "/", recursive=True)
    return dst


def petastorm_filesystem(uri: str) -> Any:
    """The file system of `uri` as the legacy pyarrow file system Petastorm's readers take (so HDFS is read
    through hdfs-native rather than Petastorm's libhdfs connector)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import pyarrow.filesystem as legacy

    class FsspecLegacy(legacy.DaskFileSystem):
        def isfile(self, path: str) -> bool:
            return self.fs.isfile(path)

        def isdir(self, path: str) -> bool:
            return self.fs.isdir(path)

    return FsspecLegacy(filesystem(uri)[0])
