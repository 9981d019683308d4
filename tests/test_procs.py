"""pipelines.core.procs: one rule for "is this process alive?" (no JVM)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.core.procs import ProcessId

pytestmark = pytest.mark.fast  # the fast tier: no JVM, cluster or training process


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


def test_staging_of_a_dead_embedded_writer_is_cleaned_and_a_live_ones_kept(tmp_path: Path) -> None:
    """core.delta.staging judges its writers by the same rule: a dead owner's staging and moved files go."""
    from pipelines.core.delta.staging import OWNER_SUFFIX, STAGING, _owner_record, clean_staging

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    staging = tmp_path / "t" / STAGING
    staging.mkdir(parents=True)
    moved = tmp_path / "t" / "part-0.parquet"
    moved.write_bytes(b"x" * 10)
    dead = {"host": socket.gethostname(), "pid": child.pid, "start": "1", "created": time.time(),
            "files": ["part-0.parquet"]}
    (staging / f"dead{OWNER_SUFFIX}").write_text(json.dumps(dead))
    (staging / "dead").mkdir()
    (staging / f"live{OWNER_SUFFIX}").write_text(json.dumps({**_owner_record(), "files": []}))
    (staging / "live").mkdir()
    cleaned = clean_staging(str(tmp_path / "t"))
    assert (cleaned.folders, cleaned.files, cleaned.bytes) == (1, 1, 10)
    assert sorted(p.name for p in staging.iterdir()) == ["live", f"live{OWNER_SUFFIX}"] and not moved.exists()
