"""The `storage`, `mlflow` and `demo` sections: where state lives and how the demo data is landed."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipelines.core.config.base import Location, Strict


class StorageConf(Strict):
    workspace: Location = "./workspace"
    engine: Literal["auto", "delta-spark", "embedded"] = "auto"
    max_records_per_file: int = Field(default=2_000_000, gt=0)


class MlflowConf(Strict):
    tracking_uri: str | None = None  # default: sqlite:///<workspace>/mlflow.db
    artifact_root: str | None = None  # default: <workspace>/mlartifacts
    experiment: str = "spark-ml-pipeline"
    registered_model: str = "spark-ml-pipeline"  # each pipeline profile names its own


class DemoConf(Strict):
    fraction: float = Field(default=1.0, gt=0, le=1)
    seed: int = 7
    # land-demo's data sets; empty: flights, digits and tweets (diamonds, the "your own data" example, when named)
    datasets: list[Literal["flights", "digits", "tweets", "diamonds"]] = Field(default_factory=list)
