"""The `storage`, `mlflow` and `demo` sections: where state lives and how the demo data is landed."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipelines.core.config.base import Location, Strict

DELTA_DEFAULT_RETENTION_HOURS = 168


class MaintainConf(Strict):
    """The maintain job: compaction, then vacuum of files unreferenced (or untracked) for `retention_hours`."""

    retention_hours: int = Field(default=DELTA_DEFAULT_RETENTION_HOURS, ge=0)
    # Delta's safety check: a shorter retention can delete the files of a writer still running and of versions a
    # reader still time-travels to; only turn it off where no job writes or reads old versions meanwhile (tests).
    check_retention: bool = True

    @model_validator(mode="after")
    def _retention_is_safe(self) -> MaintainConf:
        if self.check_retention and self.retention_hours < DELTA_DEFAULT_RETENTION_HOURS:
            raise ValueError(
                f"storage.maintain.retention_hours={self.retention_hours} is under Delta's safe minimum of "
                f"{DELTA_DEFAULT_RETENTION_HOURS} hours; set storage.maintain.check_retention=false to allow it "
                "(running writers' files and time travel to older versions may be deleted)")
        return self


class StorageConf(Strict):
    workspace: Location = "./workspace"
    engine: Literal["auto", "delta-spark", "embedded"] = "auto"
    max_records_per_file: int = Field(default=2_000_000, gt=0)
    maintain: MaintainConf = MaintainConf()


class MlflowConf(Strict):
    tracking_uri: str | None = None  # default: sqlite:///<workspace>/mlflow.db
    artifact_root: str | None = None  # default: <workspace>/mlartifacts
    experiment: str = "spark-ml-pipeline"
    registered_model: str = "spark-ml-pipeline"  # each pipeline profile names its own


class DemoConf(Strict):
    fraction: float = Field(default=1.0, gt=0, le=1)
    seed: int = 7
    # land-demo's data sets; empty: those feeding the pipeline's own ingest sources (stages.land_demo.demo_datasets)
    datasets: list[Literal["flights", "digits", "tweets", "diamonds"]] = Field(default_factory=list)
