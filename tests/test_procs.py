"""pipelines.core.procs: one rule for "is this process alive?" (no JVM)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from pipelines.core.procs import ProcessId


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_this_process_is_alive_and_a_reused_pid_is_not() -> None:
    me = ProcessId.current()
    assert (me.host, me.pid) == (socket.gethostname(), os.getpid()) and me.start and me.alive()
    assert not ProcessId(me.host, me.pid, str(int(me.start) + 1)).alive()  # the pid, started at another time
    assert ProcessId(me.host, me.pid).alive()  # start unknown: the pid decides


def test_an_exited_process_is_dead_zombie_or_reaped() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    start = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    recorded = ProcessId(socket.gethostname(), child.pid, start)
    assert recorded.alive()
    deadline = time.monotonic() + 30
    while _state(child.pid) != "Z":  # exited, not yet reaped by its parent (this process)
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not recorded.alive()
    child.wait()
    assert not recorded.alive()
