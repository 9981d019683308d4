"""The `scoring` and `monitor` sections: batch and streaming scoring, drift monitoring."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipelines.core.config.base import LandingGlob, Strict, TableName


class ScoringConf(Strict):
    """Batch scoring: which registered model (alias or version), how spark_udf runs it, where predictions go."""

    model_alias: str = "champion"
    model_version: int | None = None  # when set, wins over the alias
    env_manager: Literal["local", "virtualenv", "uv"] = "local"  # virtualenv/uv: clusters without the stack
    table: TableName = "predictions"  # gold/<table>, partitioned by the date column
    stream_path: LandingGlob | None = None  # landing glob the stream watches; default: the source table's files
    stream_checkpoint: str | None = None  # default <workspace>/checkpoints/stream-score
    stream_max_files_per_trigger: int = Field(default=10, gt=0)
    stream_trigger_seconds: int = Field(default=60, gt=0)  # processingTime trigger of the streaming variant


class MonitorConf(Strict):
    """Drift between the scored batch and the training split; alert (exit 4) when a threshold is crossed."""

    table: TableName = "drift"  # gold/<table>
    psi_threshold: float = Field(default=0.25, gt=0)
    ks_threshold: float = Field(default=0.3, gt=0, le=1)
    prediction_psi_threshold: float = Field(default=0.25, gt=0)
    bins: int = Field(default=10, ge=2)
    reference_sample_rows: int = Field(default=200_000, gt=0)  # training rows sampled as the reference
    features: list[str] | None = None  # default: every numeric and categorical input of the features config


