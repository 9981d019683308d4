"""Typed, layered configuration: conf/base -> conf/pipelines/<pipeline> -> conf/<env> -> --set (see loader.py).

One schema module per section; `Config` (root.py) holds them, and `cfg.catalog` (catalog.py) names every table.
"""

from pipelines.core.config.base import ConfigError, Strict
from pipelines.core.config.catalog import LAYERS, Catalog, CatalogEntryConf, Dataset
from pipelines.core.config.features import FeaturesConf, StatsConf
from pipelines.core.config.flows import (
    LABEL,
    CategoryLabel,
    ClassLabelConf,
    DateRangeSplit,
    FlowConf,
    HashSplit,
    HashSplitConf,
    MonthSplit,
    OutcomeLabel,
    RegressionLabel,
    RowSplit,
    ThresholdLabel,
    flow_kinds,
    flow_model,
    flow_package,
    register_flow_conf,
)
from pipelines.core.config.ingest import IngestConf, SourceConf
from pipelines.core.config.loader import (
    ENVS,
    REPO_ROOT,
    available_pipelines,
    env_references,
    load_config,
    parse_override,
)
from pipelines.core.config.root import DEFAULT_PIPELINE, Config
from pipelines.core.config.serving import MonitorConf, ScoringConf
from pipelines.core.config.spark import SparkConf
from pipelines.core.config.storage import DemoConf, MlflowConf, StorageConf
from pipelines.core.config.training import (
    BaselineConf,
    CnnConf,
    EarlyStoppingConf,
    FaultConf,
    FloatRange,
    GbtGridConf,
    HorovodConf,
    MlpConf,
    NetworkConf,
    OptimizerConf,
    PrunerConf,
    RfGridConf,
    SearchConf,
    SearchSpaceConf,
    TrainDataConf,
    TrainingConf,
)

__all__ = [
    "DEFAULT_PIPELINE", "ENVS", "LABEL", "LAYERS", "REPO_ROOT", "BaselineConf", "Catalog", "CatalogEntryConf",
    "CategoryLabel", "ClassLabelConf", "CnnConf", "Config", "ConfigError", "Dataset", "DateRangeSplit", "DemoConf",
    "EarlyStoppingConf", "FaultConf", "FeaturesConf", "FloatRange", "FlowConf", "GbtGridConf", "HashSplit",
    "HashSplitConf", "HorovodConf", "IngestConf", "MlflowConf", "MlpConf", "MonitorConf", "MonthSplit", "NetworkConf",
    "OptimizerConf", "OutcomeLabel", "PrunerConf", "RegressionLabel", "RfGridConf", "RowSplit", "ScoringConf",
    "SearchConf", "SearchSpaceConf", "SourceConf", "SparkConf", "StatsConf", "StorageConf", "Strict",
    "ThresholdLabel", "TrainDataConf", "TrainingConf", "available_pipelines", "env_references", "flow_kinds",
    "flow_model", "flow_package", "load_config", "parse_override", "register_flow_conf",
]
