"""One logging setup for jobs, notebooks and tests; one line per stage with counts and duration."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

LOG = logging.getLogger("pipeline")
_FMT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str = "INFO") -> None:
    """Configure the `pipeline` logger once; quiet the chatty libraries."""
    if not any(getattr(h, "_pipeline", False) for h in LOG.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FMT, "%H:%M:%S"))
        handler._pipeline = True  # type: ignore[attr-defined]
        LOG.addHandler(handler)
        LOG.propagate = False
    LOG.setLevel(level)
    for noisy in ("py4j", "mlflow", "alembic", "urllib3", "tensorflow", "petastorm", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class Stage:
    """Collects counts for a stage; logged as one line when the stage ends."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.counts: dict[str, Any] = {}
        self.seconds = 0.0

    def add(self, **counts: Any) -> None:
        self.counts.update(counts)


@contextmanager
def stage(name: str) -> Iterator[Stage]:
    """`with stage("ingest.flights") as s: s.add(rows_in=n)` -> one log line with the counts and duration."""
    s = Stage(name)
    start = time.perf_counter()
    try:
        yield s
    except BaseException:
        s.seconds = time.perf_counter() - start
        LOG.error("stage=%s failed after %.1fs %s", name, s.seconds, _fmt(s.counts))
        raise
    s.seconds = time.perf_counter() - start
    LOG.info("stage=%s %s duration=%.1fs", name, _fmt(s.counts), s.seconds)


def _fmt(counts: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in counts.items())
