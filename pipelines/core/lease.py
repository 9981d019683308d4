"""A lease with liveness, kept as files in the workspace (local or HDFS): one holder at a time, proof that an
earlier holder is dead before anyone cleans up after it, and a fence that stops a holder that lost it.

The lease is a chain of generation files <folder>/<generation>.json. The highest generation is the lease; each
records its holder (host, pid, the pid's start time, PID namespace and boot id, run id), a heartbeat the holder's
thread rewrites (a counter, and the holder's wall clock for people to read) and a state: held, released (finished
cleanly) or failed (stopped by an error, so it may have left unlogged rows). A new holder creates the next
generation atomically (a hard link locally, a non-overwriting rename on HDFS), so of two contenders exactly one
wins, and it holds the lease only if no newer generation exists once it created its own; nothing is ever taken
over by deleting a file.

A held lease is taken over only when its holder is dead. In the holder's own process space (same host name, PID
namespace and boot) that is when its pid is gone (a zombie, or now another process). Anywhere else it is judged by
the taker's own observation: the record must stand unchanged for the holder's expiry_s on the taker's monotonic
clock; the holder's wall clock is never compared with the taker's (hosts' clocks differ). The holder, in turn,
stops when its heartbeat cannot be written for half the expiry (its own monotonic clock) or a newer generation
exists: `check()`, the fence every commit runs right before committing, then raises LeaseLost, and `on_lost` is
called at once so running work can be cancelled. The new generation inherits, as `pending`, the run ids of every
holder that did not release cleanly, until a holder releases cleanly after dealing with them.
"""

from __future__ import annotations

import json
import os
import posixpath
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from pipelines.core.errors import BadInput
from pipelines.core.files import filesystem
from pipelines.core.logs import LOG
from pipelines.core.procs import ProcessId

SAFE_FRACTION = 0.5  # a holder stops when its last written heartbeat is older than this part of its expiry


class LeaseLost(RuntimeError):
    """This holder may no longer commit: another process took the lease over, or its heartbeat failed."""


@dataclass
class LeaseRecord:
    generation: int
    host: str
    pid: int
    pid_start: str | None
    run_id: str
    heartbeat_at: float  # the holder's wall clock at its last beat: for people; never compared across hosts
    expiry_s: float
    state: str = "held"  # held | released | failed
    pending: list[str] = field(default_factory=list)
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    beat: int = 0  # counts the holder's heartbeats: a taker watches the record change
    pid_ns: str | None = None  # where `pid` means something: the holder's PID namespace and boot
    boot_id: str | None = None

    @classmethod
    def parse(cls, raw: bytes) -> LeaseRecord:
        """A record from its file; fields this version does not know (a newer writer's) are ignored."""
        data: dict[str, Any] = json.loads(raw)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def describe(self) -> str:
        return f"run {self.run_id} (host {self.host}, pid {self.pid})"


def process_space() -> tuple[str, str | None, str | None]:
    """(host name, PID namespace, boot id) of this process: where its pid names it. None where unknown (no /proc)."""
    try:
        ns: str | None = os.readlink("/proc/self/ns/pid")
    except OSError:
        ns = None
    try:
        boot: str | None = Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        boot = None
    return socket.gethostname(), ns, boot


def holder_dead(rec: LeaseRecord, unchanged_s: float) -> bool:
    """Whether the lease `rec` is free to take: released or failed; or its holder is dead, judged by the pid only
    in the holder's own process space (host, PID namespace and boot all match, all known), elsewhere by the record
    having stood unchanged for its expiry_s on the observer's own clock (`unchanged_s`)."""
    if rec.state != "held":
        return True
    host, ns, boot = process_space()
    if ns is not None and boot is not None and (rec.host, rec.pid_ns, rec.boot_id) == (host, ns, boot):
        return not ProcessId(rec.host, rec.pid, rec.pid_start).alive()
    return unchanged_s >= rec.expiry_s


class Observation:
    """A contender's own view of the lease's newest generation: how long its content has stood unchanged, on the
    contender's monotonic clock, since the contender first saw that content."""

    def __init__(self) -> None:
        self.seen: tuple[int, bytes] | None = None
        self.since = 0.0

    def unchanged_for(self, generation: int, raw: bytes) -> float:
        now = time.monotonic()
        if self.seen != (generation, raw):
            self.seen, self.since = (generation, raw), now
        return now - self.since


class Lease:
    """Acquire with `acquire()` (waits up to `wait_s` for a live holder), heartbeat in a thread, fence each commit
    with `check()`, `release()`."""

    def __init__(self, folder: str, run_id: str, expiry_s: float = 120, heartbeat_s: float = 10,
                 wait_s: float = 1800, poll_s: float = 2, on_lost: Callable[[str], None] | None = None) -> None:
        self.folder, self.run_id = folder.rstrip("/"), run_id
        self.expiry_s, self.heartbeat_s, self.wait_s, self.poll_s = expiry_s, heartbeat_s, wait_s, poll_s
        self.safe_s = expiry_s * SAFE_FRACTION
        self.on_lost = on_lost
        self.fs, self.root = filesystem(self.folder)
        self.record: LeaseRecord | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: str | None = None
        self._beat_ok = 0.0  # monotonic time of the last heartbeat written (the generation's creation counts)

    # ---- files ------------------------------------------------------------------------------------------------
    def _path(self, generation: int) -> str:
        return posixpath.join(self.root, f"{generation:012d}.json")

    def _generations(self) -> list[int]:
        if not self.fs.isdir(self.root):
            return []
        names = (posixpath.basename(p) for p in self.fs.ls(self.root, detail=False))
        return sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())

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
        watch = Observation()
        waited_for: str | None = None
        while True:
            gens = self._generations()
            try:
                raw = self.fs.cat_file(self._path(gens[-1])) if gens else None
            except FileNotFoundError:  # pruned by a new holder between listing and reading: look again
                continue
            top = LeaseRecord.parse(raw) if raw is not None else None
            if top is None or holder_dead(top, watch.unchanged_for(top.generation, raw or b"")):
                rec = self._next(top)
                if self._create(rec):
                    newest = self._generations()[-1]
                    if newest == rec.generation:
                        self._hold(rec, top)
                        return rec.pending
                    LOG.warning("lease %s: created generation %d, but generation %d exists: not ours",
                                self.folder, rec.generation, newest)
                continue  # another contender created that generation (or a newer one) first: look again
            if time.monotonic() >= deadline:
                raise BadInput(f"lease {self.folder} is held by live {top.describe()} since before this run; "
                               f"waited {self.wait_s:.0f}s (ingest.lease.wait_s)")
            if waited_for != top.token:
                LOG.info("lease %s: held by %s, waiting up to %.0fs", self.folder, top.describe(), self.wait_s)
                waited_for = top.token
            time.sleep(self.poll_s)

    def _next(self, top: LeaseRecord | None) -> LeaseRecord:
        """Our record for the generation after `top`, inheriting the runs that did not release cleanly."""
        pending = [] if top is None else [*top.pending, *([top.run_id] if top.state != "released" else [])]
        host, ns, boot = process_space()
        return LeaseRecord(generation=(top.generation + 1) if top else 1, host=host, pid=os.getpid(),
                           pid_start=ProcessId.current().start, run_id=self.run_id, heartbeat_at=time.time(),
                           expiry_s=self.expiry_s, pending=list(dict.fromkeys(pending)), pid_ns=ns, boot_id=boot)

    def _hold(self, rec: LeaseRecord, top: LeaseRecord | None) -> None:
        if top is not None and top.state == "held":
            LOG.warning("lease %s: took over from dead holder %s", self.folder, top.describe())
        self.record = rec
        self._beat_ok = time.monotonic()
        self._prune(rec.generation)
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def _prune(self, generation: int) -> None:
        """Drop generations older than the previous one; they decide nothing any more."""
        for g in self._generations():
            if g < generation - 1:
                self.fs.rm_file(self._path(g))

    def _beat(self) -> None:
        assert self.record is not None
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._check_newer()
                self.record.beat += 1
                self.record.heartbeat_at = time.time()
                self._rewrite(self.record)
                self._beat_ok = time.monotonic()
            except LeaseLost as e:
                self._lose(str(e))
                return
            except Exception as e:  # a missed beat is retried while it is safe; then this holder stops
                silent = time.monotonic() - self._beat_ok
                if silent > self.safe_s:
                    self._lose(f"lease {self.folder}: no heartbeat of {self.record.describe()} could be written "
                               f"for {silent:.1f}s (over half the expiry {self.expiry_s:.0f}s): {e}")
                    return
                LOG.warning("lease %s: heartbeat failed: %s", self.folder, e)

    def _lose(self, why: str) -> None:
        self._lost = why
        LOG.error("%s; this run commits nothing more", why)
        if self.on_lost is not None:
            try:
                self.on_lost(why)
            except Exception as e:
                LOG.warning("lease %s: could not stop the running work: %s", self.folder, e)

    def _check_newer(self) -> None:
        assert self.record is not None, "lease not acquired"
        newer = [g for g in self._generations() if g > self.record.generation]
        if newer:
            raise LeaseLost(f"lease {self.folder} was taken over (generation {newer[-1]}) while held by "
                            f"{self.record.describe()}")

    def check(self) -> None:
        """The fence, run right before each commit: raise LeaseLost unless this holder still holds the lease (no
        newer generation) and is beating (its thread alive, its last heartbeat written within half the expiry)."""
        if self._lost:
            raise LeaseLost(self._lost)
        assert self.record is not None, "lease not acquired"
        if self._thread is None or not self._thread.is_alive():
            raise LeaseLost(f"lease {self.folder}: the heartbeat of {self.record.describe()} has stopped")
        silent = time.monotonic() - self._beat_ok
        if silent > self.safe_s:
            raise LeaseLost(f"lease {self.folder}: the last heartbeat of {self.record.describe()} was written "
                            f"{silent:.1f}s ago (over half the expiry {self.expiry_s:.0f}s)")
        self._check_newer()

    def release(self, ok: bool, pending: list[str] | None = None) -> None:
        """Stop the heartbeat and mark the lease released (ok) or failed, keeping `pending` for the next holder.
        When that cannot be written (or the lease was taken over) the lease stays as it is: the next run judges
        the holder dead by its heartbeat. Never raises, so the run's own error is what its caller sees."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.record is None:
            return
        try:
            self._check_newer()
            self.record.state = "released" if ok else "failed"
            self.record.pending = [] if ok else list(pending if pending is not None else self.record.pending)
            self._rewrite(self.record)
        except Exception as e:
            LOG.warning("lease %s: not released: %s", self.folder, e)
