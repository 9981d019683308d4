"""Named pause points for crash tests: a no-op unless SMP_FAILPOINT names the point.

When it does, the process writes the marker file named by SMP_FAILPOINT_MARKER (so a test knows it is there) and
sleeps, so the test can kill it with a real SIGKILL at exactly that point.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def pause(name: str) -> None:
    """Pause forever at point `name` when SMP_FAILPOINT == name (after writing the marker file); else return."""
    if os.environ.get("SMP_FAILPOINT") != name:
        return
    marker = os.environ.get("SMP_FAILPOINT_MARKER")
    if marker:
        Path(marker).write_text(str(os.getpid()))
    while True:
        time.sleep(1)
