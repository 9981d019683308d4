"""A lease with liveness, kept as files in the workspace (local or HDFS): one holder at a time, and proof that an
earlier holder is dead before anyone cleans up after it.

The lease is a chain of generation files <folder>/<generation>.json. The highest generation is the lease; each
records its holder (host, pid, the pid's start time, run id), a heartbeat the holder's thread rewrites, and a state:
held, released (finished cleanly) or failed (stopped by an error, so it may have left unlogged rows). A new holder
creates the next generation atomically (a hard link locally, a non-overwriting rename on HDFS), so of two
contenders exactly one wins; nothing is ever taken over by deleting a file. A held lease is taken over only when
its holder is dead: on the same host its pid is gone (a zombie, or now another process), on another host its
heartbeat is older than the expiry. The new generation inherits, as `pending`, the run ids of every holder that did
not release cleanly, until a holder releases cleanly after dealing with them.
"""

from __future__ import annotations

import json
import os
import posixpath
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from pipelines.core.errors import BadInput
from pipelines.core.files import filesystem
from pipelines.core.logs import LOG


class LeaseLost(RuntimeError):
    """Another process took the lease over: this holder must stop before committing anything more."""


@dataclass
class LeaseRecord:
    generation: int
    host: str
    pid: int
    pid_start: str | None
    run_id: str
    heartbeat_at: float
    expiry_s: float
    state: str = "held"  # held | released | failed
    pending: list[str] = field(default_factory=list)
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    def describe(self) -> str:
        return f"run {self.run_id} (host {self.host}, pid {self.pid})"


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of process `pid` from /proc (Linux), else None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], fields[19]
    except (OSError, IndexError):
        return None


def _pid_start(pid: int) -> str | None:
    """The start time of process `pid`, to tell a reused pid apart."""
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def holder_alive(rec: LeaseRecord, now: float | None = None) -> bool:
    """Whether the holder of a held lease may still be running (a released or failed lease has no holder)."""
    if rec.state != "held":
        return False
    if rec.host == socket.gethostname():
        try:
            os.kill(rec.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        stat = _proc_stat(rec.pid)
        if stat is None:  # no /proc: the pid exists, so it may be the holder
            return True
        return stat[0] not in ("Z", "X") and (rec.pid_start is None or stat[1] == rec.pid_start)
    return (now if now is not None else time.time()) - rec.heartbeat_at <= rec.expiry_s


class Lease:
    """Acquire with `acquire()` (waits up to `wait_s` for a live holder), heartbeat in a thread, `release()`."""

    def __init__(self, folder: str, run_id: str, expiry_s: float = 120, heartbeat_s: float = 10,
                 wait_s: float = 1800, poll_s: float = 2) -> None:
        self.folder, self.run_id = folder.rstrip("/"), run_id
        self.expiry_s, self.heartbeat_s, self.wait_s, self.poll_s = expiry_s, heartbeat_s, wait_s, poll_s
        self.fs, self.root = filesystem(self.folder)
        self.record: LeaseRecord | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: str | None = None

    # ---- files ------------------------------------------------------------------------------------------------
    def _path(self, generation: int) -> str:
        return posixpath.join(self.root, f"{generation:012d}.json")

    def _generations(self) -> list[int]:
        if not self.fs.isdir(self.root):
            return []
        names = (posixpath.basename(p) for p in self.fs.ls(self.root, detail=False))
        return sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())

    def _read(self, generation: int) -> LeaseRecord:
        data: dict[str, Any] = json.loads(self.fs.cat_file(self._path(generation)))
        return LeaseRecord(**data)

    def _stage(self, rec: LeaseRecord) -> str:
        tmp = posixpath.join(self.root, f".{rec.generation:012d}.{uuid.uuid4().hex[:8]}.tmp")
        self.fs.pipe_file(tmp, json.dumps(asdict(rec)).encode())
        return tmp

    def _create(self, rec: LeaseRecord) -> bool:
        """Create generation `rec.generation` with its full content, atomically; False when it already exists."""
        self.fs.makedirs(self.root, exist_ok=True)
        tmp, target = self._stage(rec), self._path(rec.generation)
        try:
            if isinstance(self.fs, LocalFileSystem):
                os.link(tmp, target)  # fails when the target exists
                return True
            self.fs.mv(tmp, target)  # HDFS rename does not overwrite: fails when the target exists
            return True
        except (FileExistsError, OSError):
            if self.fs.exists(target):
                return False
            raise
        finally:
            if self.fs.exists(tmp):
                self.fs.rm_file(tmp)

    def _rewrite(self, rec: LeaseRecord) -> None:
        """Replace our own generation file atomically (heartbeat, release)."""
        tmp, target = self._stage(rec), self._path(rec.generation)
        if isinstance(self.fs, LocalFileSystem):
            os.replace(tmp, target)
        else:
            self.fs.mv(tmp, target, overwrite=True)

    # ---- protocol ---------------------------------------------------------------------------------------------
    def acquire(self) -> list[str]:
        """Take the lease; return the run ids of earlier holders that stopped without releasing cleanly (their
        unlogged rows are now ours to roll back). Waits while a live holder has it; BadInput after `wait_s`."""
        deadline = time.monotonic() + self.wait_s
        waited_for: str | None = None
        while True:
            gens = self._generations()
            top = self._read(gens[-1]) if gens else None
            if top is None or not holder_alive(top):
                pending = [] if top is None or top.state == "released" else [*top.pending, top.run_id]
                rec = LeaseRecord(generation=(top.generation + 1) if top else 1, host=socket.gethostname(),
                                  pid=os.getpid(), pid_start=_pid_start(os.getpid()), run_id=self.run_id,
                                  heartbeat_at=time.time(), expiry_s=self.expiry_s,
                                  pending=list(dict.fromkeys(pending)))
                if self._create(rec):
                    if top is not None and top.state == "held":
                        LOG.warning("lease %s: took over from dead holder %s", self.folder, top.describe())
                    self.record = rec
                    self._prune(rec.generation)
                    self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
                    self._thread.start()
                    return rec.pending
                continue  # another contender created that generation first: look again
            if time.monotonic() >= deadline:
                raise BadInput(f"lease {self.folder} is held by live {top.describe()} since before this run; "
                               f"waited {self.wait_s:.0f}s (ingest.lease.wait_s)")
            if waited_for != top.token:
                LOG.info("lease %s: held by %s, waiting up to %.0fs", self.folder, top.describe(), self.wait_s)
                waited_for = top.token
            time.sleep(self.poll_s)

    def _prune(self, generation: int) -> None:
        """Drop generations older than the previous one; they decide nothing any more."""
        for g in self._generations():
            if g < generation - 1:
                self.fs.rm_file(self._path(g))

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.check()
                assert self.record is not None
                self.record.heartbeat_at = time.time()
                self._rewrite(self.record)
            except LeaseLost as e:
                self._lost = str(e)
                return
            except Exception as e:  # a missed beat is retried; the expiry leaves room for several
                LOG.warning("lease %s: heartbeat failed: %s", self.folder, e)

    def check(self) -> None:
        """Raise LeaseLost when a later generation exists (someone judged us dead): commit nothing more."""
        if self._lost:
            raise LeaseLost(self._lost)
        assert self.record is not None, "lease not acquired"
        newer = [g for g in self._generations() if g > self.record.generation]
        if newer:
            raise LeaseLost(f"lease {self.folder} was taken over (generation {newer[-1]}) while held by "
                            f"{self.record.describe()}")

    def release(self, ok: bool, pending: list[str] | None = None) -> None:
        """Stop the heartbeat and mark the lease released (ok) or failed, keeping `pending` for the next holder."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.record is None:
            return
        try:
            self.check()
        except LeaseLost as e:
            LOG.warning("%s", e)
            return
        self.record.state = "released" if ok else "failed"
        self.record.pending = [] if ok else list(pending if pending is not None else self.record.pending)
        self._rewrite(self.record)
