"""Per-epoch training checkpoints: model weights, optimizer state, epoch history and early-stopping state.

One file per epoch, `epoch-NNNN.npz`, in the run's folder, written by rank 0 to a temporary name and renamed,
so a worker killed mid-write never leaves a truncated latest checkpoint. `best.npz` holds the weights of the
best epoch on the monitored validation metric. Paths go through fsspec (pipelines.core.files): local folders,
hdfs:// (hdfs-native, no libhdfs) and object stores work alike.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fsspec.implementations.local import LocalFileSystem

from pipelines.core import files

_EPOCH_FILE = re.compile(r"^epoch-(\d{4,})\.npz$")
BEST = "best.npz"


@dataclass
class Checkpoint:
    """The state after `epoch` (0-based) finished; training resumes at epoch + 1."""

    epoch: int
    weights: list[np.ndarray]
    optimizer: list[np.ndarray] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # history, early stopping, attempt


FAILPOINT_ENV = "PIPELINE_FAILPOINT"  # tests: "checkpoint.write:<file name>" pauses inside that file's write
FAILPOINT_FILE_ENV = "PIPELINE_FAILPOINT_FILE"  # created (with the pid) when the point is reached; fires once


def failpoint(point: str) -> None:
    """Test hook: when PIPELINE_FAILPOINT names `point`, record this pid in PIPELINE_FAILPOINT_FILE and pause
    (up to 10 minutes) so a test can SIGKILL the process exactly here. Fires once: a later process that finds the
    file goes on. A no-op unless the variable is set."""
    marker = os.environ.get(FAILPOINT_FILE_ENV)
    if os.environ.get(FAILPOINT_ENV) != point or not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    time.sleep(600)


def _write(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Write to a temporary name beside `path`, then rename it over `path`."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = buf.getvalue()
    fs, local = files.filesystem(path)
    fs.makedirs(local.rsplit("/", 1)[0], exist_ok=True)
    tmp = f"{local}.{uuid.uuid4().hex[:8]}.tmp"
    with fs.open(tmp, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        failpoint(f"checkpoint.write:{local.rsplit('/', 1)[-1]}")
        f.write(data[len(data) // 2:])
    if fs.exists(local) and not isinstance(fs, LocalFileSystem):
        fs.rm_file(local)  # HDFS rename does not replace an existing file
    fs.mv(tmp, local)


def save(folder: str, ckpt: Checkpoint, keep: int) -> str:
    """Write `ckpt` as epoch-NNNN.npz and keep only the newest `keep` epoch files; returns the path."""
    arrays = {f"w{i}": w for i, w in enumerate(ckpt.weights)}
    arrays.update({f"o{i}": w for i, w in enumerate(ckpt.optimizer)})
    arrays["meta"] = np.array(json.dumps({"epoch": ckpt.epoch, **ckpt.meta}))
    path = f"{folder.rstrip('/')}/epoch-{ckpt.epoch:04d}.npz"
    _write(path, arrays)
    for old in list_epochs(folder)[:-keep]:
        files.remove(f"{folder.rstrip('/')}/epoch-{old:04d}.npz")
    return path


def save_best(folder: str, weights: list[np.ndarray], epoch: int) -> None:
    """Weights of the best epoch so far (the model the job finally logs)."""
    _write(f"{folder.rstrip('/')}/{BEST}",
           {**{f"w{i}": w for i, w in enumerate(weights)}, "meta": np.array(json.dumps({"epoch": epoch}))})


def list_epochs(folder: str) -> list[int]:
    """Epoch numbers with a complete checkpoint in `folder`, ascending (empty when there is none)."""
    return sorted(int(m.group(1)) for name in files.listdir(folder) if (m := _EPOCH_FILE.match(name)))


def _read(path: str) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, Any]]:
    with np.load(io.BytesIO(files.read_bytes(path)), allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        weights = [data[f"w{i}"] for i in range(sum(k.startswith("w") for k in data.files))]
        opt = [data[f"o{i}"] for i in range(sum(k.startswith("o") for k in data.files))]
    return weights, opt, meta


def load_latest(folder: str) -> Checkpoint | None:
    """The newest complete checkpoint in `folder`, or None."""
    epochs = list_epochs(folder)
    if not epochs:
        return None
    weights, opt, meta = _read(f"{folder.rstrip('/')}/epoch-{epochs[-1]:04d}.npz")
    epoch = int(meta.pop("epoch"))
    return Checkpoint(epoch, weights, opt, meta)


def load_best(folder: str) -> tuple[int, list[np.ndarray]] | None:
    """(epoch, weights) of best.npz, or None."""
    path = f"{folder.rstrip('/')}/{BEST}"
    if not files.exists(path):
        return None
    weights, _, meta = _read(path)
    return int(meta["epoch"]), weights
