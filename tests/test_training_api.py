"""The training package's pure parts, without a JVM, Horovod or TensorFlow: the driver/task contract imports on
its own, the baselines are ranked on validation and the comparison report is built from them."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from pipelines.core.config import REPO_ROOT
from pipelines.training.report import comparison, rank_baselines

pytestmark = pytest.mark.fast  # the fast tier: no JVM, cluster or training process

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


@dataclass
class _Baseline:
    kind: str
    validation: dict[str, float]
    test: dict[str, float]
    best_params: dict[str, Any] = field(default_factory=dict)
    test_labels: np.ndarray = field(default_factory=lambda: np.zeros(4))


def test_baselines_rank_on_validation_never_test() -> None:
    logreg = _Baseline("logreg", {"roc_auc": 0.80}, {"roc_auc": 0.95})
    gbt = _Baseline("gbt", {"roc_auc": 0.90}, {"roc_auc": 0.70})
    rf = _Baseline("rf", {"roc_auc": float("nan")}, {"roc_auc": 0.99})
    unjudged = _Baseline("none", {}, {"roc_auc": 1.0})
    assert [b.kind for b in rank_baselines([logreg, rf, unjudged, gbt], "roc_auc", False)] == [
        "gbt", "logreg", "rf", "none"]
    low = _Baseline("a", {"rmse": 1.5}, {}), _Baseline("b", {"rmse": 0.5}, {}), _Baseline("c", {"rmse": 0.5}, {})
    assert [b.kind for b in rank_baselines(low, "rmse", True)] == ["b", "c", "a"]  # lower is better; ties stay
    assert rank_baselines([], "rmse", True) == []


def test_comparison_report_lists_the_model_then_the_baselines() -> None:
    gbt = _Baseline("gbt", {"accuracy": 0.9}, {"accuracy": 0.88}, {"maxDepth": 3, "stepSize": 0.1})
    logreg = _Baseline("logreg", {"accuracy": 0.8}, {}, {"regParam": 0.01}, np.zeros(3))
    report, markdown = comparison("accuracy", False, 4, {"accuracy": 0.91}, {"accuracy": 0.92}, [gbt, logreg])
    assert report["best_baseline"] == "gbt" and report["lower_is_better"] is False
    assert [(m["model"], m["validation"], m["test"], m["test_rows"]) for m in report["models"]] == [
        ("keras", 0.91, 0.92, 4), ("gbt", 0.9, 0.88, 4), ("logreg", 0.8, None, 3)]
    assert report["same_test_rows"] is False  # logreg was judged on 3 rows, the others on 4
    lines = markdown.splitlines()
    assert lines[0] == "# Keras model vs MLlib baselines (accuracy, test split)"
    assert lines[2] == "Best baseline (by validation accuracy): gbt"
    assert lines[6:] == ["| keras | 0.9100 | 0.9200 | 4 |  |",
                         "| gbt | 0.9000 | 0.8800 | 4 | maxDepth=3, stepSize=0.1 |",
                         "| logreg | 0.8000 | n/a | 3 | regParam=0.01 |"]
    alone, _ = comparison("rmse", True, 2, {"rmse": 1.0}, {"rmse": 2.0}, [])
    assert alone["best_baseline"] is None and alone["same_test_rows"] is True


def test_served_model_loads_without_mlflow_warnings() -> None:
    """MLflow checks the predict method's type hints where the model is loaded (every Spark Python worker that
    scores); the served model's hints must be ones it accepts, so no worker prints a UserWarning."""
    code = """
import runpy, sys, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    runpy.run_path("pipelines/training/serving.py", run_name="served_model")
print([str(w.message) for w in caught if issubclass(w.category, UserWarning)])
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]"


def test_the_model_input_description_comes_from_the_flow() -> None:
    """Feature arrays by default; a flow's decode spec makes the model read (and decode) encoded bytes itself."""
    from pipelines.training.pyfunc import ENCODED_INPUT_COL, INPUT_COL, input_description, ships_preprocessing

    vectors = input_description({}, 12, None)
    assert vectors == {"input": "features", "input_column": INPUT_COL, "vector_size": 12, "input_shape": None}
    assert ships_preprocessing(vectors)
    decode = {"height": 8, "width": 8, "channels": 1, "resample": "bilinear", "normalize": True}
    images = input_description({"input": "image", "decode": decode}, 64, (8, 8, 1))
    assert images == {"input": "image", "input_column": ENCODED_INPUT_COL, "vector_size": 64,
                      "input_shape": [8, 8, 1], "decode": decode}
    assert not ships_preprocessing(images)
