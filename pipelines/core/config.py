"""Layered YAML configuration: conf/base, then conf/<env>, then --set overrides, validated into typed objects.

Every error names the dotted key and the file (or `--set`) that gave it, so a user can fix it without reading code.
Values may reference environment variables as ${VAR} or ${VAR:-default}; secrets are read that way, never stored.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

REPO_ROOT = Path(__file__).resolve().parents[2]
ENVS = ("local", "standalone", "yarn")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """A configuration problem; the message names the key and where it was set."""


class Strict(BaseModel):
    """Base for config sections: unknown keys are errors, values are not coerced across types."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


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

    @field_validator("conf", mode="before")
    @classmethod
    def _conf_as_strings(cls, v: Any) -> Any:
        """Spark conf values are strings; YAML numbers and booleans are written as Spark expects them."""
        if isinstance(v, dict):
            return {k: str(x).lower() if isinstance(x, bool) else str(x) for k, x in v.items()}
        return v


class StorageConf(Strict):
    workspace: str = "${PIPELINE_HOME:-./workspace}"
    engine: Literal["auto", "delta-spark", "embedded"] = "auto"
    max_records_per_file: int = Field(default=2_000_000, gt=0)


class MlflowConf(Strict):
    tracking_uri: str | None = None  # default: sqlite:///<workspace>/mlflow.db
    artifact_root: str | None = None  # default: <workspace>/mlartifacts
    experiment: str = "spark-ml-pipeline"
    registered_model: str = "flight-delay"


class DemoConf(Strict):
    fraction: float = Field(default=1.0, gt=0, le=1)
    seed: int = 7


class SourceConf(Strict):
    """One landing source: where its files are, how to parse them, which bronze table they feed."""

    path: str  # glob relative to the landing zone, e.g. flights/*.csv
    format: Literal["csv"] = "csv"
    delimiter: str = ","
    header: bool = True
    null_values: list[str] = Field(default_factory=lambda: ["", "NA"])
    timestamp_format: str = "ISO8601"  # pandas/strptime format, or ISO8601
    columns: dict[str, str]  # ordered name -> Spark SQL type
    partition_by: list[str] = Field(default_factory=list)
    table: str

    @field_validator("columns")
    @classmethod
    def _known_types(cls, v: dict[str, str]) -> dict[str, str]:
        allowed = {"string", "int", "bigint", "double", "float", "boolean", "date", "timestamp"}
        bad = {k: t for k, t in v.items() if t not in allowed}
        if bad:
            raise ValueError(f"unsupported column types {bad}; allowed: {sorted(allowed)}")
        if not v:
            raise ValueError("at least one column is required")
        return v

    @field_validator("delimiter")
    @classmethod
    def _one_char(cls, v: str) -> str:
        if len(v) != 1:
            raise ValueError("delimiter must be exactly one character")
        return v


class IngestConf(Strict):
    sources: dict[str, SourceConf]
    sniff_bytes: int = Field(default=65536, gt=0)


# ---- features section (issue 3: features job) --------------------------------------------------------------------
class FeaturesConf(Strict):
    """Feature-table build: filled in by the features stage."""


# ---- training section (issue 4: train job) ------------------------------------------------------------------------
class TrainingConf(Strict):
    """Distributed training: filled in by the training stage."""


class Config(Strict):
    env: Literal["local", "standalone", "yarn"] = "local"
    spark: SparkConf = SparkConf()
    storage: StorageConf = StorageConf()
    mlflow: MlflowConf = MlflowConf()
    demo: DemoConf = DemoConf()
    ingest: IngestConf
    features: FeaturesConf = FeaturesConf()
    training: TrainingConf = TrainingConf()

    @property
    def workspace(self) -> str:
        """Workspace root as an absolute local path or a URI (hdfs://, s3a://)."""
        ws = self.storage.workspace
        return ws if "://" in ws else str(Path(ws).expanduser().resolve())

    def table_path(self, layer: str, name: str) -> str:
        if layer not in LAYERS:
            raise ConfigError(f"unknown table layer {layer!r}; layers are {LAYERS}")
        return f"{self.workspace.rstrip('/')}/tables/{layer}/{name}"

    @property
    def landing(self) -> str:
        return f"{self.workspace.rstrip('/')}/tables/landing"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or f"sqlite:///{self.workspace}/mlflow.db"

    @property
    def artifact_root(self) -> str:
        return self.mlflow.artifact_root or f"{self.workspace}/mlartifacts"


LAYERS = ("landing", "bronze", "silver", "gold", "quarantine")


def _expand_env(value: Any, where: str, key: str) -> Any:
    """Replace ${VAR} / ${VAR:-default} in strings; a missing variable without default is an error."""
    if isinstance(value, dict):
        return {k: _expand_env(v, where, f"{key}.{k}" if key else k) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, where, key) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        var, default = m.group(1), m.group(2)
        if var in os.environ and os.environ[var] != "":
            return os.environ[var]
        if default is None:
            raise ConfigError(f"{key}: environment variable {var} is not set ({where})")
        return default

    return _ENV_REF.sub(sub, value)


def _merge(base: dict, over: dict, origin: dict[str, str], where: str, prefix: str = "") -> dict:
    """Deep-merge `over` into `base`, remembering which file set each dotted key."""
    out = dict(base)
    for k, v in over.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v, origin, where, key + ".")
        else:
            out[k] = v
            origin[key] = where
            if isinstance(v, dict):
                for sub in _flatten(v, key + "."):
                    origin[sub] = where
    return out


def _flatten(d: dict, prefix: str) -> list[str]:
    keys = []
    for k, v in d.items():
        keys.append(prefix + str(k))
        if isinstance(v, dict):
            keys.extend(_flatten(v, f"{prefix}{k}."))
    return keys


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", parsed value); the value is read as YAML so numbers and lists keep their type."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set {item!r}: bad key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _key_path(data: dict, key: str) -> list[str]:
    """Split a dotted override key along the existing config; a map with dotted keys (spark.conf) takes the rest.

    `spark.conf.spark.sql.shuffle.partitions` -> ["spark", "conf", "spark.sql.shuffle.partitions"].
    """
    parts, path, node = key.split("."), [], data
    while parts:
        rest = ".".join(parts)
        if isinstance(node, dict) and (rest in node or (parts[0] not in node and any("." in k for k in node))):
            return [*path, rest]
        path.append(parts.pop(0))
        node = node.get(path[-1]) if isinstance(node, dict) else None
    return path


def _nest(path: list[str], value: Any) -> dict:
    out: Any = value
    for part in reversed(path):
        out = {part: out}
    return out


def load_config(
    env: str = "local", overrides: list[str] | tuple[str, ...] = (), conf_dir: str | Path | None = None
) -> Config:
    """Load conf/base/*.yaml, then conf/<env>/*.yaml, then `key=value` overrides; validate; return Config."""
    if env not in ENVS:
        raise ConfigError(f"env: unknown environment {env!r}; choose one of {ENVS}")
    root = Path(conf_dir or os.environ.get("PIPELINE_CONF_DIR") or REPO_ROOT / "conf")
    if not (root / "base").is_dir():
        raise ConfigError(f"config folder {root}/base not found (set PIPELINE_CONF_DIR or --conf-dir)")
    origin: dict[str, str] = {"env": "--env"}
    data: dict = {"env": env}
    for layer in (root / "base", root / env):
        for path in sorted(layer.glob("*.yaml")) if layer.is_dir() else []:
            where = str(path.relative_to(root.parent) if root.parent in path.parents else path)
            data = _merge(data, _expand_env(_read_yaml(path), where, ""), origin, where)
    for item in overrides:
        key, value = parse_override(item)
        data = _merge(data, _expand_env(_nest(_key_path(data, key), value), "--set", ""), origin, "--set")
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e, origin)) from None


def _describe(err: ValidationError, origin: dict[str, str]) -> str:
    lines = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"])
        where = _origin_of(key, origin)
        msg = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        if item["type"] != "extra_forbidden" and "input" in item and not isinstance(item["input"], dict):
            msg += f" (got {item['input']!r})"
        lines.append(f"{key}: {msg} [{where}]")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _origin_of(key: str, origin: dict[str, str]) -> str:
    parts = key.split(".")
    while parts:
        k = ".".join(parts)
        if k in origin:
            return origin[k]
        parts.pop()
    return "defaults"
