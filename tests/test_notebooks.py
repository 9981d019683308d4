"""Every notebook in notebooks/ runs headless, top to bottom, on a small sample, in a kernel of this environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.core.config import REPO_ROOT
from pipelines.core.notebook import LocalDbutils, read_databricks_source, run_notebooks

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.py"))


@pytest.mark.fast
def test_databricks_source_format() -> None:
    assert NOTEBOOKS, "no notebooks found"
    for nb in NOTEBOOKS:
        cells = read_databricks_source(nb)
        assert cells[0][0] == "markdown" and any(kind == "code" for kind, _ in cells), nb.name
        code = "\n".join(src for kind, src in cells if kind == "code")
        assert "get_dbutils" in code and "dbutils.widgets" in code, f"{nb.name}: parameters must be widgets"


@pytest.mark.fast
def test_local_widgets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WIDGET_FRACTION", "0.5")
    w = LocalDbutils().widgets
    w.text("fraction", "0.02")
    w.text("env", "local")
    w.dropdown("flow", "flights", ["flights", "digits"])
    assert (w.get("fraction"), w.getArgument("env"), w.get("flow")) == ("0.5", "local", "flights")
    monkeypatch.setenv("WIDGET_FLOW", "cats")
    with pytest.raises(ValueError, match="not one of"):
        w.dropdown("flow", "flights", ["flights", "digits"])


def test_notebooks_execute(tmp_path: Path) -> None:
    """One workspace for all notebooks, run in order in one kernel, as a person would run them on one cluster (each
    from an empty namespace: `%reset -f` between them)."""
    env = {"PIPELINE_HOME": str(tmp_path / "ws"), "WIDGET_FRACTION": "0.01", "WIDGET_EPOCHS": "2",
           "WIDGET_DATES": "2013-12-02:2013-12-03"}
    for nb, executed in zip(NOTEBOOKS, run_notebooks(NOTEBOOKS, env), strict=True):
        errors = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
                  if o.get("output_type") == "error"]
        assert not errors, f"{nb.name}: {errors}"
    for table in ("bronze/flights", "silver/flight_features", "gold/predictions", "gold/drift", "bronze/digits",
                  "silver/digit_features", "gold/digit_predictions"):
        assert (tmp_path / "ws" / "tables" / table / "_delta_log").is_dir(), table
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'ws' / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.job = 'train'")
    frameworks = {r.data.params["flow"]: r.data.params["framework"] for r in runs}
    assert frameworks == {"tabular": "tensorflow", "image": "pytorch"}, frameworks  # 07 trains digits with PyTorch
    assert [nb.name for nb in NOTEBOOKS] == ["01_land_and_ingest.py", "02_features.py", "03_exploration.py",
                                             "04_train.py", "05_score.py", "06_monitor.py",
                                             "07_images_and_text.py"]


@pytest.mark.fast
def test_notebooks_in_one_kernel_share_no_names(tmp_path: Path) -> None:
    """run_notebooks empties the namespace between notebooks: the second cannot use the first's variable."""
    from nbclient.exceptions import CellExecutionError

    first, second = tmp_path / "a.py", tmp_path / "b.py"
    first.write_text("# Databricks notebook source\nleft_over = 41\n")
    second.write_text("# Databricks notebook source\nprint(left_over + 1)\n")
    (ran,) = run_notebooks([first])
    assert ran.cells[0].outputs == []
    with pytest.raises(CellExecutionError, match="NameError"):
        run_notebooks([first, second])
