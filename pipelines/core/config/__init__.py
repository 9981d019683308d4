"""Typed, layered configuration: conf/base -> conf/pipelines/<pipeline> -> conf/<env> -> --set (see loader.py).

One schema module per section; `Config` (root.py) holds them, and `cfg.catalog` (catalog.py) names every table.
"""

from pipelines.core.config.base import ConfigError, Strict
from pipelines.core.config.catalog import LAYERS, Catalog, CatalogEntryConf, Dataset
from pipelines.core.config.features import FeaturesConf, StatsConf
from pipelines.core.config.flows import (
    FLOW_KINDS,
    LABEL,
    BucketizedGroup,
    CategoricalGroup,
    CategoryLabel,
    ClassLabelConf,
    CyclicalGroup,
    DateRangeSplit,
    FeatureGroup,
    FlowConf,
    HashSplit,
    HashSplitConf,
    ImageFlowConf,
    JoinConf,
    MonthSplit,
    NumericGroup,
    RegressionLabel,
    SelectorConf,
    TabularFlowConf,
    TabularLabel,
    TabularSplit,
    TextFlowConf,
    ThresholdLabel,
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
    "DEFAULT_PIPELINE", "ENVS", "FLOW_KINDS", "LABEL", "LAYERS", "REPO_ROOT", "BaselineConf", "BucketizedGroup",
    "Catalog", "CatalogEntryConf", "CategoricalGroup", "CategoryLabel", "ClassLabelConf", "CnnConf", "Config",
    "ConfigError", "CyclicalGroup", "Dataset", "DateRangeSplit", "DemoConf", "EarlyStoppingConf", "FaultConf",
    "FeatureGroup", "FeaturesConf", "FloatRange", "GbtGridConf", "PrunerConf", "RfGridConf", "SearchConf",
    "SearchSpaceConf", "FlowConf", "HashSplit", "HashSplitConf", "HorovodConf", "ImageFlowConf",
    "IngestConf", "JoinConf", "MlflowConf", "MlpConf", "MonitorConf", "MonthSplit", "NetworkConf", "NumericGroup",
    "OptimizerConf", "RegressionLabel", "ScoringConf", "SelectorConf", "SourceConf", "SparkConf", "StatsConf",
    "StorageConf", "Strict", "TabularFlowConf", "TabularLabel", "TabularSplit", "TextFlowConf", "ThresholdLabel",
    "TrainDataConf", "TrainingConf", "available_pipelines", "env_references", "load_config", "parse_override",
]
