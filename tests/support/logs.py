"""Collect what the project's logger ("pipeline") says: setup_logging turns its propagation off, so pytest's caplog
does not see it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from pipelines.core.logs import LOG


class _Collect(logging.Handler):
    def __init__(self, into: list[str], level: int) -> None:
        super().__init__(level)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())


@contextmanager
def logged(level: int = logging.WARNING) -> Iterator[list[str]]:
    """The messages LOG emits at `level` or above inside the block (filled in as they come)."""
    lines: list[str] = []
    handler = _Collect(lines, level)
    LOG.addHandler(handler)
    try:
        yield lines
    finally:
        LOG.removeHandler(handler)
