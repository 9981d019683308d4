"""A Delta table's folder and log read as files (no Spark, no JVM): what each commit added, which files any
version references, partition values and commit metadata in the shape both engines share.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable
from fsspec import AbstractFileSystem

from pipelines.core import files

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"

EMBEDDED_ENGINE_INFO = {"engine": "spark-ml-pipeline/embedded"}


def _local(path: str) -> str:
    return path[len("file://") :] if path.startswith("file://") else path


def _commit_actions(root: Path, version: int) -> list[dict[str, Any]]:
    """The actions of one JSON commit; a commit that cannot be read counts as a metadata change (a conflict)."""
    try:
        text = (root / "_delta_log" / f"{version:020d}.json").read_text()
    except OSError:
        return [{"metaData": {}}]
    return [json.loads(line) for line in text.splitlines() if line.strip()]


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


def _partition_key(values: dict[str, Any]) -> dict[str, str | None]:
    """Partition values as the Delta log spells them (strings, booleans lower-case, null as None)."""
    return {k: None if v is None else str(v).lower() if isinstance(v, bool) else str(v) for k, v in values.items()}


def _rs_exists(path: str) -> bool:
    try:
        DeltaTable(path)
        return True
    except Exception:
        return False


def _user_metadata_entry(metadata: dict[str, str] | None) -> dict[str, str]:
    """A write's metadata as the commit's userMetadata (JSON), the field both engines record and read."""
    return {"userMetadata": json.dumps(metadata, sort_keys=True)} if metadata else {}


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
