"""The baselines report: the MLlib baselines ranked best first by the promotion metric on validation (never test:
choosing on test would flatter the winner), and the Keras model beside every baseline on the same test rows
(report/model_comparison.json and .md on the train run). Pure but for `record`, which puts a report on a run."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from pipelines.core.recorder import Recorder


class Judged(Protocol):
    """What the report reads of a baseline (pipelines.training.baseline.BaselineResult)."""

    kind: str
    best_params: dict[str, Any]
    validation: dict[str, float]
    test: dict[str, float]
    test_labels: np.ndarray


def rank_value(value: float | None, lower_is_better: bool) -> float:
    """Sort key, best first; a missing or NaN value last."""
    if value is None or math.isnan(value):
        return float("inf")
    return value if lower_is_better else -value


def rank_baselines(results: Sequence[Judged], metric: str, lower_is_better: bool) -> list[Any]:
    """The baselines best first by validation `metric` (stable among equals; NaN or missing last)."""
    return sorted(results, key=lambda r: rank_value(r.validation.get(metric, float("nan")), lower_is_better))


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


MODEL_NAMES = {"tensorflow": ("keras", "Keras"), "pytorch": ("pytorch", "PyTorch")}  # framework -> (key, title)


def comparison(metric: str, lower_is_better: bool, test_rows: int, validation: dict[str, float],
               test: dict[str, float], baselines: Sequence[Judged], framework: str = "tensorflow"
               ) -> tuple[dict[str, Any], str]:
    """(report, its markdown table): the trained network of `framework` (with its `validation` and `test` metrics
    on `test_rows` rows; named keras or pytorch) and every baseline (ranked best first), with whether all were
    judged on the same number of test rows."""
    key, title = MODEL_NAMES[framework]
    rows = [{"model": key, "params": {}, "validation": validation.get(metric), "test": test.get(metric),
             "test_rows": test_rows}]
    rows += [{"model": b.kind, "params": b.best_params, "validation": b.validation.get(metric),
              "test": b.test.get(metric), "test_rows": len(b.test_labels)} for b in baselines]
    report = {"metric": metric, "lower_is_better": lower_is_better,
              "best_baseline": baselines[0].kind if baselines else None,
              "same_test_rows": all(r["test_rows"] == test_rows for r in rows), "models": rows}
    lines = [f"# {title} model vs MLlib baselines ({metric}, test split)", "",
             f"Best baseline (by validation {metric}): {report['best_baseline']}", "",
             f"| model | validation {metric} | test {metric} | test rows | tuned params |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {_fmt(r['validation'])} | {_fmt(r['test'])} | {r['test_rows']} | "
              f"{', '.join(f'{k}={v}' for k, v in r['params'].items())} |" for r in rows]
    return report, "\n".join(lines) + "\n"


def record(rec: Recorder, report: Any, markdown: str, name: str) -> None:
    """A report on the run as `name`.json and its table as `name`.md."""
    folder, _, stem = name.rpartition("/")
    rec.report(report, f"{name}.json")
    with tempfile.TemporaryDirectory(prefix="report-") as tmp:
        (Path(tmp) / f"{stem}.md").write_text(markdown)
        rec.artifacts(tmp, folder or None)
