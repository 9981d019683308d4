"""The fast tier (`./run-tests.sh --fast`) stays fast: every file that marks tests `fast` imports without Horovod
(its guard makes such an import fail), and the guard also refuses to start a JVM."""

from __future__ import annotations

import subprocess
import sys

from pipelines.core.config import REPO_ROOT


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def test_fast_tier_collects_without_horovod() -> None:
    res = run("-m", "pytest", "--fast", "--collect-only", "-q", "-p", "no:cacheprovider", "tests")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    collected = [line for line in res.stdout.splitlines() if "::" in line]
    assert len(collected) >= 100
    heavy = ("tests/test_train.py::", "tests/test_train_crash.py::", "tests/test_yarn.py::",
             "tests/test_notebooks.py::test_notebooks_execute")
    assert not [line for line in collected if line.startswith(heavy)]


def test_the_guard_blocks_horovod_and_the_jvm() -> None:
    code = ("from tests.support.fastguard import BlockedImport, install\n"
            "install()\n"
            "try:\n    import horovod.tensorflow\nexcept BlockedImport as e:\n    print(e)\n"
            "from pyspark.sql import SparkSession\n"
            "try:\n    SparkSession.builder.master('local[1]').getOrCreate()\nexcept Exception as e:\n"
            "    print('no jvm:', type(e).__name__)\n")
    res = run("-c", code)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.splitlines()[0] == "the fast tier must not import horovod"
    assert res.stdout.splitlines()[-1].startswith("no jvm: ")
