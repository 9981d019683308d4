"""The ingest lease without a JVM: a live holder is never taken over (whatever its clock says, wherever its pid
lives), a dead one is, after the taker itself watched its heartbeat stand still for the expiry; a holder that
cannot beat stops; of contenders exactly one holds the newest generation.

Holders on "other hosts" are threads here that rewrite a lease record as a holder's heartbeat would (the record's
own fields, so the files are what a real holder writes); the contenders are real `Lease` objects.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from pipelines.core.errors import BadInput
from pipelines.core.lease import Lease, LeaseLost, LeaseRecord

pytestmark = pytest.mark.fast  # the fast tier: no JVM, cluster or training process

EXPIRY = 1.0  # seconds: the holders' expiry in these tests


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _write(folder: Path, generation: int, **values: Any) -> None:
    """Write generation `generation` as a holder would: the fields LeaseRecord has, others dropped."""
    rec = {"generation": generation, "host": "elsewhere", "pid": 1, "pid_start": None, "run_id": f"run-{generation}",
           "heartbeat_at": time.time(), "expiry_s": EXPIRY, **values}
    known = {f.name for f in fields(LeaseRecord)}
    tmp = folder / f".{generation}.tmp"
    tmp.write_text(json.dumps({k: v for k, v in rec.items() if k in known}))
    os.replace(tmp, folder / f"{generation:012d}.json")


@contextmanager
def _beating(folder: Path, generation: int, every: float = 0.1, **values: Any) -> Iterator[None]:
    """A holder that keeps beating (heartbeat_at on its own clock, `clock_offset` from ours) until the block ends,
    then stops beating: it died."""
    offset = values.pop("clock_offset", 0.0)
    stop = threading.Event()

    def beat() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            _write(folder, generation, heartbeat_at=time.time() + offset, beat=n, **values)
            stop.wait(every)

    folder.mkdir(parents=True, exist_ok=True)
    _write(folder, generation, heartbeat_at=time.time() + offset, **values)
    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _contender(folder: Path, run: str, wait_s: float) -> Lease:
    return Lease(str(folder), run, expiry_s=EXPIRY, heartbeat_s=0.1, wait_s=wait_s, poll_s=0.05)


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_beating_holder_whose_clock_is_behind_is_not_taken_over_a_silent_one_is(tmp_path: Path) -> None:
    """Clock skew: the holder's heartbeat_at is an hour behind the taker's clock, but it beats: it lives. Once it
    stops beating it is taken over, and only after the taker saw it stand still for the expiry on its own clock."""
    folder = tmp_path / "lease"
    with _beating(folder, 1, clock_offset=-3600):
        with pytest.raises(BadInput, match="held by live run run-1"):
            _contender(folder, "taker", wait_s=2 * EXPIRY).acquire()
        start = time.monotonic()
    taker = _contender(folder, "taker", wait_s=10 * EXPIRY)
    assert taker.acquire() == ["run-1"]  # the dead run is handed on, to be rolled back
    assert time.monotonic() - start >= EXPIRY
    taker.release(True)


def test_a_holder_whose_clock_is_ahead_is_taken_over_once_it_stops(tmp_path: Path) -> None:
    """The other way round: a heartbeat_at an hour in the future does not keep a dead holder alive."""
    folder = tmp_path / "lease"
    with _beating(folder, 1, clock_offset=3600):
        pass
    start = time.monotonic()
    taker = _contender(folder, "taker", wait_s=10 * EXPIRY)
    assert taker.acquire() == ["run-1"]
    assert EXPIRY <= time.monotonic() - start < 8 * EXPIRY
    taker.release(True)


def test_a_holder_in_another_pid_namespace_is_judged_by_its_heartbeat(tmp_path: Path) -> None:
    """A holder in a container with this host's name: its pid means nothing in this process table (here no such
    process exists), so it is alive while it beats, and taken over only after it stopped."""
    folder = tmp_path / "lease"
    container = {"host": socket.gethostname(), "pid": _dead_pid(), "pid_ns": "pid:[1]", "boot_id": _boot_id()}
    with _beating(folder, 1, **container):
        with pytest.raises(BadInput, match="held by live run run-1"):
            _contender(folder, "taker", wait_s=2 * EXPIRY).acquire()
        start = time.monotonic()
    taker = _contender(folder, "taker", wait_s=10 * EXPIRY)
    assert taker.acquire() == ["run-1"]
    assert time.monotonic() - start >= EXPIRY
    taker.release(True)


def test_same_process_space_trusts_the_pid(tmp_path: Path) -> None:
    """This host, this PID namespace, this boot: a live pid is alive even when its record stands still, a gone pid
    is taken over at once (no expiry to wait)."""
    folder = tmp_path / "lease"
    folder.mkdir()
    me = {"host": socket.gethostname(), "pid_ns": os.readlink("/proc/self/ns/pid"), "boot_id": _boot_id()}
    child = subprocess.Popen(["sleep", "60"])
    _write(folder, 1, pid=child.pid, heartbeat_at=0, **me)
    with pytest.raises(BadInput, match="held by live run run-1"):
        _contender(folder, "a", wait_s=2 * EXPIRY).acquire()
    child.kill()
    child.wait()
    start = time.monotonic()
    taker = _contender(folder, "b", wait_s=10 * EXPIRY)
    assert taker.acquire() == ["run-1"] and time.monotonic() - start < EXPIRY
    taker.release(False)  # failed: its run and the inherited one are handed on
    again = _contender(folder, "c", wait_s=0)
    assert again.acquire() == ["run-1", "b"]
    again.release(True)
    assert _contender(folder, "d", wait_s=0).acquire() == []  # released cleanly: nothing pending


def test_a_holder_whose_heartbeat_cannot_be_written_stops(tmp_path: Path) -> None:
    """The heartbeat thread fails (here its folder is gone, replaced by a file) while the main thread goes on:
    after half the expiry without a beat the holder's fence check fails, before a taker may judge it dead."""
    folder = tmp_path / "lease"
    holder = Lease(str(folder), "holder", expiry_s=EXPIRY, heartbeat_s=0.1, wait_s=0, poll_s=0.05)
    holder.acquire()
    holder.check()
    shutil.rmtree(folder)
    folder.write_text("not a folder")
    start = time.monotonic()
    while time.monotonic() - start < EXPIRY:
        try:
            holder.check()
        except LeaseLost as e:
            assert "heartbeat" in str(e)
            break
        time.sleep(0.02)
    else:
        pytest.fail("the holder went on committing for the whole expiry without a heartbeat")
    assert time.monotonic() - start <= EXPIRY / 2 + 0.3
    holder.release(False)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread dies on purpose
def test_a_holder_whose_heartbeat_thread_died_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "lease"
    holder = Lease(str(folder), "holder", expiry_s=60, heartbeat_s=0.05, wait_s=0, poll_s=0.05)

    def die(self: Lease, rec: LeaseRecord) -> None:
        raise SystemExit("thread killed")

    holder.acquire()
    monkeypatch.setattr(Lease, "_rewrite", die)
    time.sleep(0.3)
    with pytest.raises(LeaseLost, match="heartbeat"):
        holder.check()


def test_acquire_holds_the_newest_generation_or_waits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A contender that created generation 2 while another contender already made generation 3 (a stale view of
    the folder) did not win: it waits for the live holder of 3 instead of running beside it."""
    folder = tmp_path / "lease"
    folder.mkdir()
    _write(folder, 1, state="released")
    me = {"host": socket.gethostname(), "pid": os.getpid(), "pid_ns": os.readlink("/proc/self/ns/pid"),
          "boot_id": _boot_id()}
    create = Lease._create

    def create_then_overtaken(self: Lease, rec: LeaseRecord) -> bool:
        made = create(self, rec)
        if rec.generation == 2:
            _write(folder, 3, run_id="other", **me)
        return made

    monkeypatch.setattr(Lease, "_create", create_then_overtaken)
    late = _contender(folder, "late", wait_s=2 * EXPIRY)
    with pytest.raises(BadInput, match="held by live run other"):
        late.acquire()
    assert late.record is None


def test_contenders_for_a_free_lease_one_wins(tmp_path: Path) -> None:
    """Eight contenders at once: exactly one holds generation 1; the others find it held by a live holder."""
    won: list[Lease] = []
    free = tmp_path / "free"
    go = threading.Barrier(8)

    def contend(i: int) -> None:
        lease = Lease(str(free), f"c{i}", expiry_s=60, heartbeat_s=1, wait_s=0, poll_s=0.1)
        go.wait()
        try:
            lease.acquire()
            won.append(lease)
        except BadInput:
            pass

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and [p.name for p in free.glob("*.json")] == [f"{1:012d}.json"]
    assert json.loads((free / f"{1:012d}.json").read_text())["run_id"] == won[0].run_id
    won[0].release(True)
