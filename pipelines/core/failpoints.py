"""Named failpoints for crash tests: a no-op unless the environment names the point.

`PIPELINE_FAILPOINT=<point>` makes `pause(point)` create `<PIPELINE_FAILPOINT_DIR>/<point>` (holding this
process's pid) and sleep, so a test can SIGKILL the process exactly there; `PIPELINE_FAILPOINT=<point>:raise` makes
it raise FailpointError instead. A point pauses once: a later process (a retried task, the next run) that finds the
marker goes on. Executors' Python workers inherit the variables, so a point may sit inside a UDF or a barrier task.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

ENV = "PIPELINE_FAILPOINT"
DIR_ENV = "PIPELINE_FAILPOINT_DIR"
PAUSE_SECONDS = 600


class FailpointError(RuntimeError):
    """Raised at a failpoint that the environment set to `raise`."""


def pause(point: str) -> None:
    """Stop here when the environment names `point` (pause for a kill, or raise); otherwise return at once."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    name, _, action = wanted.partition(":")
    if name != point:
        return
    if action == "raise":
        raise FailpointError(f"failpoint {point}")
    folder = Path(os.environ.get(DIR_ENV, "."))
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{point}.{os.getpid()}"
    tmp.write_text(str(os.getpid()))
    try:
        os.link(tmp, folder / point)  # atomic, and refuses when the point already fired
    except FileExistsError:
        return
    finally:
        tmp.unlink()
    time.sleep(PAUSE_SECONDS)
