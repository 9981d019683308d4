"""Is this process still alive? One answer for everything that records its process and is judged by it later
(the ingest lease's holder, an embedded Delta writer's staging, a training task's work folder).

A process is named by its host, pid and start time (clock ticks since boot, field 22 of /proc/<pid>/stat), so a
pid the kernel gave to a new process is told apart from the one recorded. It is dead when its pid is gone, when it
is a zombie (it has exited; only its exit status waits for its parent) or when another process now has its pid.
Where there is no /proc (another OS) a pid that exists counts as alive: nothing is removed on a guess.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

DEAD_STATES = ("Z", "X")  # zombie, dead


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of process `pid` from /proc, or None where there is none."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], fields[19]
    except (OSError, IndexError):
        return None


@dataclass(frozen=True)
class ProcessId:
    """One process: its host, pid and start time (None where there is no /proc)."""

    host: str
    pid: int
    start: str | None = None

    @classmethod
    def current(cls) -> ProcessId:
        """This process."""
        stat = _stat(os.getpid())
        return cls(socket.gethostname(), os.getpid(), stat[1] if stat else None)

    def alive(self) -> bool:
        """Whether the process still runs in this host's process table: False when its pid is gone, it is a
        zombie, or the pid now belongs to a process started at another time (when `start` is known). The caller
        decides whether this host's process table is the one that counts (same host, PID namespace)."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # it exists, as another user's process: /proc still tells its state and start
            pass
        stat = _stat(self.pid)
        if stat is None:
            return True
        state, started = stat
        return state not in DEAD_STATES and (self.start is None or started == self.start)
