"""What the trainer asks a flow: its head, the pyfunc's input rows for feature-table rows, and extra pyfunc meta.

Minimal stand-in over today's flow code (cfg.flow selects tabular, image or text), for the trainer and its
tests; the flows registry replaces it.
"""

from __future__ import annotations

from typing import Any, Protocol

from pyspark.sql import DataFrame


class Flow(Protocol):
    def head(self, cfg: Any) -> str: ...

    def model_input(self, cfg: Any, store: Any, record: Any, rows: DataFrame) -> tuple[DataFrame, str]: ...

    def serving_meta(self, cfg: Any) -> dict[str, Any]: ...


class _Vectors:
    """Tabular and text: the pyfunc reads the table's `features` arrays."""

    def __init__(self, head: str) -> None:
        self._head = head

    def head(self, cfg: Any) -> str:
        label = getattr(cfg.features, "label", None)
        return "regression" if getattr(label, "kind", None) == "regression" else self._head

    def model_input(self, cfg: Any, store: Any, record: Any, rows: DataFrame) -> tuple[DataFrame, str]:
        return rows, "features"

    def serving_meta(self, cfg: Any) -> dict[str, Any]:
        return {}


class _Image:
    """Images: the pyfunc reads the bronze image bytes, joined to the rows by key; it decodes them itself."""

    def head(self, cfg: Any) -> str:
        return "multiclass"

    def model_input(self, cfg: Any, store: Any, record: Any, rows: DataFrame) -> tuple[DataFrame, str]:
        key, content = cfg.image.key, cfg.image.content_column
        source = cfg.features.source_table
        images = store.read(cfg.table_path("bronze", source), record.bronze_versions.get(source)).select(key, content)
        return rows.join(images, key), content

    def serving_meta(self, cfg: Any) -> dict[str, Any]:
        ic = cfg.image
        return {"decode": {"height": ic.height, "width": ic.width, "channels": ic.channels, "resample": ic.resample,
                           "normalize": ic.normalize}}


def get_flow(cfg: Any) -> Flow:
    """The flow of `cfg.flow`."""
    if cfg.flow == "image":
        return _Image()
    return _Vectors("multiclass" if cfg.flow == "text" else "binary")
