"""The `features` section: the generic part of a feature-table build (tables, pinned inputs, statistics).

What the rows become (label, split, joins, groups...) is the flow's business: its own config model, in its
folder (pipelines/flows/<kind>/config.py), validated through the registry in `flows.py`.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from pipelines.core.config.base import Strict, TableName


class StatsConf(Strict):
    """Descriptive statistics of the training split, logged to MLflow."""

    enabled: bool = True
    histogram_bins: int = Field(default=30, ge=2)
    spearman: bool = True
    spearman_max_rows: int = Field(default=50_000, ge=100)  # Spearman sorts every column: sample above this
    seed: int = 7
    max_plot_columns: int = Field(default=12, ge=1)


class FeaturesConf(Strict):
    """Feature-table build: the bronze source table, the silver output table, pinned input versions, statistics.

    `pipeline` names the recipe so runs and tables can be told apart.
    """

    pipeline: str = "v1"
    source_table: str = "source"  # bronze fact table (each profile names its own)
    output_table: TableName = "features"  # silver
    bronze_versions: dict[str, int] = Field(default_factory=dict)  # table -> pinned version; unset = latest
    stats: StatsConf = StatsConf()
    model_dir: str | None = None  # default: <workspace>/models/preprocessing

    @field_validator("bronze_versions")
    @classmethod
    def _versions(cls, v: dict[str, int]) -> dict[str, int]:
        bad = {t: n for t, n in v.items() if n < 0}
        if bad:
            raise ValueError(f"table versions are >= 0, got {bad}")
        return v
