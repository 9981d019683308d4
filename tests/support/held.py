"""A writer run in a thread of the test process and held at a failpoint while the test interleaves another writer
(see pipelines/core/failpoints.py: the `wait` action, `hold` and `release`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path


class HeldWriter:
    """Runs `target` in a thread; what it raises is kept in `errors` (the test asserts on them)."""

    def __init__(self, target: Callable[[], object]) -> None:
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, args=(target,))
        self.thread.start()

    def _run(self, target: Callable[[], object]) -> None:
        try:
            target()
        except Exception as e:
            self.errors.append(f"{type(e).__name__}: {str(e)[:1000]}")

    def wait_at(self, marker: Path, timeout: float = 300) -> None:
        """Wait until the writer reached the failpoint whose marker file is `marker`."""
        deadline = time.monotonic() + timeout
        while not marker.exists():
            assert self.thread.is_alive() and time.monotonic() < deadline, f"never reached {marker}: {self.errors}"
            time.sleep(0.05)

    def join(self, timeout: float = 300) -> list[str]:
        """Wait for the writer to finish; return its errors."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the writer is still running"
        return self.errors
