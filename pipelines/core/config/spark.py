"""The `spark` section: session settings and the resources spark-submit.sh asks for."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from pipelines.core.config.base import Strict


class SparkConf(Strict):
    app_name: str = "spark-ml-pipeline"
    master: str = "local[2]"
    deploy_mode: Literal["client", "cluster"] = "client"
    log_level: Literal["ERROR", "WARN", "INFO", "DEBUG"] = "WARN"
    conf: dict[str, str] = Field(default_factory=dict)
    # Executor resources, used by spark-submit.sh for cluster environments.
    driver_memory: str = "2g"
    executor_memory: str = "2g"
    executor_cores: int = 1
    num_executors: int | None = None
    queue: str | None = None
    packages: list[str] = Field(default_factory=list)
    jars: list[str] = Field(default_factory=list)
    # yarn: prefix of the Python 3.11 installation on the cluster nodes that the packed venv links to.
    python_prefix: str | None = None

    @field_validator("conf", mode="before")
    @classmethod
    def _conf_as_strings(cls, v: Any) -> Any:
        """Spark conf values are strings; YAML numbers and booleans are written as Spark expects them."""
        if isinstance(v, dict):
            return {k: str(x).lower() if isinstance(x, bool) else str(x) for k, x in v.items()}
        return v
