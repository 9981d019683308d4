"""Workspaces for tests: a copy of a migrated, empty MLflow tracking database (the `mlflow_db` fixture) where the
default config looks for it, so a test does not pay MLflow's schema migrations (3-5 s) again."""

from __future__ import annotations

import shutil
from pathlib import Path


def with_mlflow_db(ws: Path, template: Path) -> Path:
    """`ws` (made if missing) holding a copy of the `template` tracking database as mlflow.db."""
    ws.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, ws / "mlflow.db")
    return ws
