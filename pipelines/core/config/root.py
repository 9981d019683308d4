"""The whole configuration: one model per section, and what is derived from them (workspace, catalog, MLflow)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SerializeAsAny, ValidatorFunctionWrapHandler, field_validator

from pipelines.core.config.base import Strict
from pipelines.core.config.catalog import Catalog, CatalogEntryConf, build_catalog
from pipelines.core.config.features import FeaturesConf
from pipelines.core.config.flows import FlowConf, flow_model
from pipelines.core.config.ingest import IngestConf
from pipelines.core.config.serving import MonitorConf, ScoringConf
from pipelines.core.config.spark import SparkConf
from pipelines.core.config.storage import DemoConf, MlflowConf, StorageConf
from pipelines.core.config.training import TrainingConf

DEFAULT_PIPELINE = "flights"


class Config(Strict):
    env: Literal["local", "standalone", "yarn"] = "local"
    pipeline: str = DEFAULT_PIPELINE  # a profile folder conf/pipelines/<name>/
    flow: SerializeAsAny[FlowConf]  # what the rows become: the model its flow registered for `flow.kind`
    spark: SparkConf = SparkConf()
    storage: StorageConf = StorageConf()
    mlflow: MlflowConf = MlflowConf()
    demo: DemoConf = DemoConf()
    ingest: IngestConf = IngestConf()
    features: FeaturesConf = FeaturesConf()
    training: TrainingConf = TrainingConf()
    scoring: ScoringConf = ScoringConf()
    monitor: MonitorConf = MonitorConf()
    catalog_overrides: dict[str, CatalogEntryConf] = Field(default_factory=dict, alias="catalog")

    @field_validator("flow", mode="wrap")
    @classmethod
    def _flow(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """A `flow:` mapping is validated by its kind's own model (see flows.py); a model instance is kept."""
        return flow_model(value).model_validate(value) if isinstance(value, dict) else handler(value)

    @property
    def workspace(self) -> str:
        """Workspace root as an absolute local path or a URI (hdfs://, s3a://)."""
        ws = self.storage.workspace
        return ws if "://" in ws else str(Path(ws).expanduser().resolve())

    @cached_property
    def catalog(self) -> Catalog:
        """Every dataset by name (see catalog.py); validated when the config is loaded."""
        return build_catalog(self)

    @property
    def tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or f"sqlite:///{self.workspace}/mlflow.db"

    @property
    def artifact_root(self) -> str:
        return self.mlflow.artifact_root or f"{self.workspace}/mlartifacts"
