"""The fast tier's guard (`pytest --fast`, what `./run-tests.sh --fast` runs; tests/conftest.py installs it): it proves
the fast tests need neither Horovod nor a JVM. Importing `horovod` raises, and SPARK_HOME points at a folder that does
not exist, so a test that starts a SparkSession or a spark-submit job fails at once instead of taking minutes."""

from __future__ import annotations

import importlib.abc
import os
import sys
from collections.abc import Sequence
from types import ModuleType

BLOCKED = ("horovod",)
NO_SPARK_HOME = "/nonexistent/fast-tier-starts-no-jvm"


class BlockedImport(ImportError):
    """A fast test (or what it imports) reached for something the fast tier must not need."""


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> None:
        if fullname.split(".")[0] in BLOCKED:
            raise BlockedImport(f"the fast tier must not import {fullname}")
        return None


def install() -> None:
    """Block the heavy imports and any JVM start in this process and in the Python processes it spawns."""
    for name in [m for m in sys.modules if m.split(".")[0] in BLOCKED]:
        del sys.modules[name]
    sys.meta_path.insert(0, _Blocker())
    os.environ["SPARK_HOME"] = NO_SPARK_HOME
