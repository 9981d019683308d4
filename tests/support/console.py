"""What a job's console shows beside its stage lines: the measure of a quiet scheduled run."""

from __future__ import annotations

import re

STAGE_LINE = re.compile(r"^\d\d:\d\d:\d\d INFO pipeline: stage=")
# Lines the score and run-all consoles showed, that a person cannot act on (conf/log4j2.properties,
# pipelines/core/logs.py): none of them may come back.
KNOWN_NOISE = ("WARNING: Using incubator modules", "Truncated the string representation of a plan",
               "Failed to load implementation from", "already exists on this machine", "Broadcasting large task binary")


def beside_stages(console: str) -> list[str]:
    """The console's non-empty lines that are not stage lines."""
    return [line for line in console.splitlines() if line.strip() and not STAGE_LINE.match(line)]


def noise(console: str) -> list[str]:
    """The console's lines that are known noise."""
    return [line for line in console.splitlines() if any(n in line for n in KNOWN_NOISE)]
