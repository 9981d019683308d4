"""Per-epoch training checkpoints: model weights, optimizer state, epoch history, early-stopping state and the best
epoch so far with its weights.

One file per epoch, `epoch-NNNN.npz`, in the run's folder, written by rank 0 to a temporary name
(`<name>.<random>.tmp`) and renamed, then published by its completeness marker `epoch-NNNN.npz.done` (size and
SHA-256 of the file). Only an epoch with a marker whose size and checksum match counts as a checkpoint, so a
rank killed mid-write (or between the rename and the marker, or a store whose rename is a copy) never leaves a
checkpoint that training resumes from; `clean` removes such leftovers at the start of each attempt. The weights of
the best epoch on the monitored validation metric travel inside each epoch's file (stored once more only when the
best epoch is an earlier one), so a complete checkpoint always holds the very weights of the epoch it names as the
best: there is no second file a kill could leave behind or ahead of it. Paths go through fsspec
(pipelines.core.files): local folders, hdfs:// (hdfs-native, no libhdfs) and object stores work alike.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fsspec.implementations.local import LocalFileSystem

from pipelines.core import files
from pipelines.core.failpoints import pause

_EPOCH_FILE = re.compile(r"^epoch-(\d{4,})\.npz$")
_MARKER_FILE = re.compile(r"^epoch-(\d{4,})\.npz\.done$")
DONE = ".done"  # completeness marker suffix


@dataclass
class Checkpoint:
    """The state after `epoch` (0-based) finished; training resumes at epoch + 1."""

    epoch: int
    weights: list[np.ndarray]
    optimizer: list[np.ndarray] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # history, early stopping, attempt
    best_epoch: int | None = None  # the best epoch so far on the monitored metric
    best_weights: list[np.ndarray] | None = None  # its weights (this epoch's `weights` when it is this epoch)

    @property
    def best(self) -> tuple[int, list[np.ndarray]] | None:
        """(epoch, weights) of the best epoch so far, or None."""
        if self.best_epoch == self.epoch:
            return self.best_epoch, self.weights
        return (self.best_epoch, self.best_weights) if self.best_epoch is not None and self.best_weights else None


def _write(path: str, arrays: dict[str, np.ndarray]) -> bytes:
    """Write to a temporary name beside `path`, then rename it over `path`; returns the bytes written."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = buf.getvalue()
    _publish(path, data)
    return data


def _publish(path: str, data: bytes) -> None:
    fs, local = files.filesystem(path)
    fs.makedirs(local.rsplit("/", 1)[0], exist_ok=True)
    tmp = f"{local}.{uuid.uuid4().hex[:8]}.tmp"
    with fs.open(tmp, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        pause(f"checkpoint.write.{local.rsplit('/', 1)[-1]}")
        f.write(data[len(data) // 2:])
    if fs.exists(local) and not isinstance(fs, LocalFileSystem):
        fs.rm_file(local)  # HDFS rename does not replace an existing file
    fs.mv(tmp, local)


def save(folder: str, ckpt: Checkpoint, keep: int) -> str:
    """Write `ckpt` as epoch-NNNN.npz and keep only the newest `keep` epoch files; returns the path."""
    arrays = {f"w{i}": w for i, w in enumerate(ckpt.weights)}
    arrays.update({f"o{i}": w for i, w in enumerate(ckpt.optimizer)})
    if ckpt.best_epoch is not None and ckpt.best_epoch != ckpt.epoch:
        arrays.update({f"b{i}": w for i, w in enumerate(ckpt.best_weights or [])})
    arrays["meta"] = np.array(json.dumps({"epoch": ckpt.epoch, "best_epoch": ckpt.best_epoch, **ckpt.meta}))
    path = _epoch_path(folder, ckpt.epoch)
    data = _write(path, arrays)
    _publish(path + DONE, json.dumps({"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}).encode())
    for old in list_epochs(folder)[:-keep]:
        files.remove(_epoch_path(folder, old) + DONE)  # unpublish first: never a marker without its file
        files.remove(_epoch_path(folder, old))
    return path


def _epoch_path(folder: str, epoch: int) -> str:
    return f"{folder.rstrip('/')}/epoch-{epoch:04d}.npz"


def clean(folder: str) -> list[str]:
    """Remove what an interrupted save left in `folder`: temporary files, epoch files without a completeness
    marker, markers without their file. Returns the names removed. Only rank 0 of a running attempt writes here, so
    it calls this before it starts (any writer of an earlier attempt is dead by then)."""
    names = files.listdir(folder)
    marked = {m.group(1) for n in names if (m := _MARKER_FILE.match(n))}
    published = {m.group(1) for n in names if (m := _EPOCH_FILE.match(n))}
    junk = [n for n in names if n.endswith(".tmp")
            or ((m := _EPOCH_FILE.match(n)) and m.group(1) not in marked)
            or ((m := _MARKER_FILE.match(n)) and m.group(1) not in published)]
    for name in junk:
        files.remove(f"{folder.rstrip('/')}/{name}")
    return junk


def list_epochs(folder: str) -> list[int]:
    """Epoch numbers with a published checkpoint (file and completeness marker) in `folder`, ascending."""
    names = set(files.listdir(folder))
    return sorted(int(m.group(1)) for name in names
                  if (m := _MARKER_FILE.match(name)) and name[: -len(DONE)] in names)


def _verified(path: str) -> bytes | None:
    """The checkpoint file's bytes when they match its completeness marker, else None."""
    try:
        marker = json.loads(files.read_bytes(path + DONE))
        data = files.read_bytes(path)
    except (OSError, ValueError):
        return None
    ok = len(data) == marker["bytes"] and hashlib.sha256(data).hexdigest() == marker["sha256"]
    return data if ok else None


def _read(raw: bytes) -> Checkpoint:
    with np.load(io.BytesIO(raw), allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        arrays = {p: [data[f"{p}{i}"] for i in range(sum(k.startswith(p) for k in data.files))] for p in "wob"}
    epoch, best_epoch = int(meta.pop("epoch")), meta.pop("best_epoch", None)
    return Checkpoint(epoch, arrays["w"], arrays["o"], meta, best_epoch, arrays["b"] or None)


def load_latest(folder: str) -> Checkpoint | None:
    """The newest complete checkpoint in `folder` (published, and its bytes match its marker), or None."""
    for epoch in reversed(list_epochs(folder)):
        path = _epoch_path(folder, epoch)
        raw = _verified(path)
        if raw is None:
            print(f"checkpoint {path} does not match its completeness marker: skipped", flush=True)
            continue
        return _read(raw)
    return None


def load_best(folder: str) -> tuple[int, list[np.ndarray]] | None:
    """(epoch, weights) of the best epoch as the newest complete checkpoint in `folder` records it, or None."""
    ckpt = load_latest(folder)
    return ckpt.best if ckpt else None


def resume_point(folder: str, resume_from: str | None, rank: int) -> Checkpoint | None:
    """Where a training attempt starts: the newest complete checkpoint of this run's `folder`, else of
    `resume_from` (--resume), else None. Rank 0, the only writer, first removes what an interrupted save left."""
    if rank == 0:
        removed = clean(folder)
        if removed:
            print(f"removed what an interrupted checkpoint save left: {removed}", flush=True)
    ckpt = load_latest(folder)
    return load_latest(resume_from) if ckpt is None and resume_from else ckpt
