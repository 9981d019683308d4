"""Databricks-style notebooks outside Databricks: a local stand-in for dbutils widgets, and a runner that executes
Databricks source-format notebooks (`# Databricks notebook source`, `# COMMAND ----------`) headless.

On Databricks the real `dbutils` exists and `get_dbutils` returns it; locally widgets take their values from
WIDGET_<NAME> environment variables (how the tests and a scheduler pass parameters) or their defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CELL_SEP = "# COMMAND ----------"
HEADER = "# Databricks notebook source"


class LocalWidgets:
    """The subset of dbutils.widgets that notebooks use: text, dropdown, get, getArgument, removeAll."""

    def __init__(self) -> None:
        self._values: dict[str, str] = {}

    def text(self, name: str, default: str, label: str | None = None) -> None:
        self._values[name] = os.environ.get(f"WIDGET_{name.upper()}", default)

    def dropdown(self, name: str, default: str, choices: list[str], label: str | None = None) -> None:
        value = os.environ.get(f"WIDGET_{name.upper()}", default)
        if value not in choices:
            raise ValueError(f"widget {name}: {value!r} is not one of {choices}")
        self._values[name] = value

    def get(self, name: str) -> str:
        if name not in self._values:
            raise KeyError(f"widget {name!r} is not defined; define it with dbutils.widgets.text first")
        return self._values[name]

    getArgument = get  # noqa: N815 - dbutils' own name

    def removeAll(self) -> None:  # noqa: N802 - dbutils' own name
        self._values.clear()


class LocalDbutils:
    """Local stand-in for Databricks' dbutils (widgets only)."""

    def __init__(self) -> None:
        self.widgets = LocalWidgets()


def get_dbutils(spark: Any = None) -> Any:
    """Databricks' dbutils when running there, else the local stand-in."""
    try:
        from pyspark.dbutils import DBUtils  # type: ignore[import-not-found]  # only on Databricks

        return DBUtils(spark)
    except ImportError:
        return LocalDbutils()


@dataclass
class Notebook:
    """What every notebook starts from: its widgets, the config, the session, the store and the flow."""

    dbutils: Any
    cfg: Any
    spark: Any
    store: Any
    flow: Any

    def widget(self, name: str) -> str:
        return self.dbutils.widgets.get(name)


def open_notebook(dbutils: Any, overrides: list[str] | tuple[str, ...] = ()) -> Notebook:
    """The shared preamble of the notebooks: widgets `env` (default local) and `pipeline` (default: the config's
    default) beside the notebook's own; the config of env + pipeline + `overrides`; the session from the one
    session factory; the Delta store; the pipeline's flow."""
    from pipelines.core.config import load_config
    from pipelines.core.delta import DeltaStore
    from pipelines.core.session import get_spark
    from pipelines.flows import get_flow

    for name, default in (("env", "local"), ("pipeline", "")):
        try:
            dbutils.widgets.get(name)
        except Exception:  # not defined by the notebook: a text widget with the default
            dbutils.widgets.text(name, default)
    pipeline = dbutils.widgets.get("pipeline")
    cfg = load_config(dbutils.widgets.get("env"), [*([f"pipeline={pipeline}"] if pipeline else []), *overrides])
    spark = get_spark(cfg, "notebook")
    return Notebook(dbutils, cfg, spark, DeltaStore(spark, cfg.storage.engine, cfg.storage.max_records_per_file),
                    get_flow(cfg))


def read_databricks_source(path: Path) -> list[tuple[str, str]]:
    """Cells of a Databricks source-format notebook as (kind, source), kind 'markdown' or 'code'."""
    text = path.read_text()
    if not text.startswith(HEADER):
        raise ValueError(f"{path}: not a Databricks source notebook (first line must be {HEADER!r})")
    cells = []
    for chunk in text[len(HEADER):].split(CELL_SEP):
        lines = chunk.strip("\n").splitlines()
        if not lines:
            continue
        if all(line.startswith("# MAGIC") for line in lines):
            body = "\n".join(line[len("# MAGIC"):].lstrip() for line in lines)
            if body.startswith("%md"):
                cells.append(("markdown", body[len("%md"):].lstrip()))
                continue
        cells.append(("code", "\n".join(lines)))
    return cells


def _as_notebook(cells: list[tuple[str, str]]) -> Any:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "markdown" else nbformat.v4.new_code_cell(src)
                for kind, src in cells]
    return nb


def run_notebooks(paths: list[Path], env: dict[str, str] | None = None, timeout: int = 900) -> list[Any]:
    """Execute Databricks source notebooks one after another in one kernel of this environment, as notebooks
    attached to one cluster share its Spark session; return the executed notebooks. Each notebook starts from an
    empty namespace (`%reset -f`), so none leans on another's variables; a failing cell stops the run with nbclient's
    CellExecutionError naming it."""
    from nbclient import NotebookClient

    notebooks = [_as_notebook(read_databricks_source(path)) for path in paths]
    reset = _as_notebook([("code", "%reset -f")])
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        client = NotebookClient(reset, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(paths[0].parent) if paths else "."}})
        with client.setup_kernel():
            for nb in notebooks:
                for current in (reset, nb):
                    client.nb = current
                    for index, cell in enumerate(current.cells):
                        client.execute_cell(cell, index)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return notebooks
