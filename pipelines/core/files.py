"""File access outside Spark (landing files, checkpoints, caches, models) through fsspec: local, HDFS or object
stores. HDFS goes through hdfs-native (pure Rust, reads HADOOP_CONF_DIR), so no libhdfs/JNI is needed on a node."""

from __future__ import annotations

import os
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
    it), with the size and modification time that identify a delivery (`mtime_ms` -1: the file system reports
    none). `refused` is why the listed name cannot be read as a delivery (a symbolic link to nothing or out of
    the landing zone)."""

    uri: str
    size: int
    mtime_ms: int
    refused: str | None = None


def to_uri(path: str) -> str:
    """Local paths become file:// URIs (as Spark reports them in _metadata.file_path); URIs pass through."""
    return path if "://" in path else Path(path).resolve().as_uri()


def modified_ms(info: dict[str, Any]) -> int:
    """A file's modification time in ms from an fsspec `info()`, whichever file system gave it (local `mtime` in
    seconds, hdfs-native `modification_time` in ms, s3fs `LastModified`, adlfs `last_modified`); -1 when none."""
    if info.get("modification_time") is not None:
        return int(info["modification_time"])
    for key in ("mtime", "LastModified", "last_modified"):
        value = info.get(key)
        if value is not None:
            return int((value.timestamp() if hasattr(value, "timestamp") else float(value)) * 1000)
    return -1


def _link_problem(path: str, zone: str) -> str | None:
    """Why a local symbolic link cannot be read as a delivery: its target is missing, or outside the landing
    zone `zone` (a real path); None for a link to a file inside the zone, or to a folder."""
    target = os.path.realpath(path)
    if os.path.isdir(target):
        return None
    if not os.path.exists(target):
        return f"dangling symbolic link: its target {target} does not exist"
    if os.path.commonpath([target, zone]) != zone:
        return f"symbolic link leading outside the landing zone, to {target}: refused"
    return None


def list_files(base: str, pattern: str) -> list[FileInfo]:
    """Files under `base` (the landing zone) matching the glob `pattern`, sorted by URI. Names stay as the file
    system spells them (a space stays a space): a percent-encoded local URI would name another file to fsspec and
    to Spark. A local symbolic link to nothing or out of `base` is listed with the reason it is `refused`; a file
    removed while the folder is listed is not listed."""
    uri = to_uri(base).rstrip("/") + "/" + pattern
    fs, root = filesystem(uri)
    local = isinstance(fs, LocalFileSystem)
    zone = os.path.realpath(filesystem(base)[1]) if local else ""
    out = []
    for p in sorted(fs.glob(root)):
        if local and os.path.islink(p) and (problem := _link_problem(p, zone)):
            link = os.lstat(p)
            out.append(FileInfo(fs.unstrip_protocol(p), link.st_size, int(link.st_mtime * 1000), problem))
            continue
        try:
            info = fs.info(p)
        except FileNotFoundError:
            continue
        if info.get("type") != "file":
            continue
        out.append(FileInfo(fs.unstrip_protocol(p), int(info["size"]), modified_ms(info)))
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
    with open_read(uri) as f:
        return f.read(n)


# Every non-local file system instance this process made, held for its life (fsspec's instance cache holds them
# too). fsspec's after-fork hook empties that cache in a forked child; were it the last reference to an hdfs-native
# client, dropping it there would wait forever on the client's runtime threads, which a forked child does not have:
# the child would hang before it could exec (seen with pyspark's gateway launch and any preexec_fn subprocess).
_HELD: dict[int, AbstractFileSystem] = {}


def filesystem(uri: str) -> tuple[AbstractFileSystem, str]:
    """(file system, path in it) for a local path or URI."""
    fs, path = fsspec.core.url_to_fs(to_uri(uri))
    if not isinstance(fs, LocalFileSystem):
        _HELD.setdefault(id(fs), fs)
    return fs, path


def open_read(uri: str) -> Any:
    """A binary file object for reading `uri` (a context manager)."""
    fs, path = filesystem(uri)
    return fs.open(path, "rb")


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
    """Write `data` to a temporary name beside `uri`, then rename it over `uri`: readers see old or new, never half.
    The temporary name is hidden (`.name.<random>.tmp`), so folder listings (Spark's file source, the landing
    zone's rule) skip it."""
    fs, path = filesystem(uri)
    folder, name = posixpath.split(path)
    fs.makedirs(folder, exist_ok=True)
    tmp = posixpath.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
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
