"""The training package's pure parts, without a JVM, Horovod or TensorFlow: the driver/task contract imports on
its own, the baselines are ranked on validation and the comparison report is built from them."""

from __future__ import annotations

import subprocess
import sys

from pipelines.core.config import REPO_ROOT

BLOCKED = """
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("horovod", "tensorflow"):
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, Block())
"""


def test_spec_imports_without_horovod_or_tensorflow() -> None:
    """The driver/task contract (and the training package's front) load where neither is installed."""
    code = BLOCKED + """
import pipelines.training.spec as spec
import pipelines.training
assert spec.WorkerSpec and issubclass(spec.WorkerFailed, RuntimeError)
assert not [m for m in sys.modules if m.split(".")[0] in ("horovod", "tensorflow")]
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "ok"
