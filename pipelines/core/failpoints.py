"""Named failpoints for crash and race tests: a no-op unless the environment names the point.

`PIPELINE_FAILPOINT=<point>` makes `pause(point)` create `<PIPELINE_FAILPOINT_DIR>/<point>` (holding this
process's pid) and sleep, so a test can SIGKILL the process exactly there; `PIPELINE_FAILPOINT=<point>:raise` makes
it raise FailpointError instead; `PIPELINE_FAILPOINT=<point>:wait` makes it wait there until the test calls
`release(point, folder)`, so a test can interleave another writer exactly at that point. A point stops once: a
later pass (a retried write, a retried task, the next run) that finds the marker goes on. Executors' Python workers
inherit the variables, so a point may sit inside a UDF or a barrier task; a test's own UDF may call `hold`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

ENV = "PIPELINE_FAILPOINT"
DIR_ENV = "PIPELINE_FAILPOINT_DIR"
PAUSE_SECONDS = 600
GO_SUFFIX = ".go"


class FailpointError(RuntimeError):
    """Raised at a failpoint that the environment set to `raise`."""


def pause(point: str) -> None:
    """Stop here when the environment names `point` (pause for a kill, wait for a release, or raise); otherwise
    return at once."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    name, _, action = wanted.partition(":")
    if name != point:
        return
    if action == "raise":
        raise FailpointError(f"failpoint {point}")
    hold(point, os.environ.get(DIR_ENV, "."), until_released=action == "wait")


def hold(point: str, folder: str | Path, until_released: bool = True) -> None:
    """Mark `point` as reached in `folder` and stop: until `release(point, folder)` (or PAUSE_SECONDS), or for
    PAUSE_SECONDS (a kill is expected). Returns at once when the point was reached before."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{point}.{os.getpid()}.{time.monotonic_ns()}"
    tmp.write_text(str(os.getpid()))
    try:
        os.link(tmp, folder / point)  # atomic, and refuses when the point already fired
    except FileExistsError:
        return
    finally:
        tmp.unlink()
    deadline = time.monotonic() + PAUSE_SECONDS
    while time.monotonic() < deadline:
        if until_released and (folder / f"{point}{GO_SUFFIX}").exists():
            return
        time.sleep(0.05)


def release(point: str, folder: str | Path) -> None:
    """Let a process (or thread) waiting at `point` go on."""
    (Path(folder) / f"{point}{GO_SUFFIX}").touch()
