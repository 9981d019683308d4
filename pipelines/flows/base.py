"""The one shape every flow has: a Flow turns bronze rows into a feature table and model inputs; the stages
(features, train, score, monitor) do the I/O and tracking around it and never ask which flow they run.

A new flow is exactly two things, and nothing else in the project changes (no stage, no core module, no existing test):
  - its folder: a package holding its config model (config.py: a `pipelines.core.config.FlowConf` subclass with
    `kind: Literal["<kind>"] = "<kind>"`, built from the shared labels and splits where they fit) and its Flow
    class (the hooks below; ClassifiedTableFlow gives the defaults of a one-table multiclass flow), registered
    together with `@register("<kind>", <ConfigModel>)` in the package's __init__.py;
  - its conf profile: conf/pipelines/<name>/*.yaml with `flow.kind: <kind>` (its sources, features, training).
The folder is pipelines/flows/<kind>/, or any importable package that the profile names in `flow.module` (a flow
kept outside the project; tests/support/flows/toy is one). The config loader imports that package to validate
the profile's `flow:` section with the registered model; `get_flow` returns the registered Flow.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession

from pipelines.core.config import FlowConf, register_flow_conf
from pipelines.core.errors import BadInput

if TYPE_CHECKING:
    from pipelines.core.config import Config
    from pipelines.core.delta import DeltaStore
    from pipelines.core.recorder import FeaturesRecord, Recorder

SPLITS = ("train", "validation", "test")
LABEL = "label"  # the table's label column: int class id (binary, multiclass) or double (regression); null = none
FEATURES = "features"  # the table's model input: array<float>
VECTOR_COL = "features_vector"  # a preprocessing PipelineModel's final output (VectorUDT, never stored)


@dataclass
class FeatureSet:
    """What a flow's featurize step built: the silver rows, the fitted preprocessing and the counts.

    `counts` has rows_in and rows_out, and every row left out is counted under a reason, so that
    rows_in == rows_out + the other counts. `cached` frames are unpersisted by the stage after writing;
    `extra` carries what the flow's own statistics need (never read by the stages).
    """

    table: DataFrame
    model: PipelineModel
    counts: dict[str, Any]
    classes: list[str] | None = None  # multiclass: class names in id order
    input_shape: list[int] | None = None  # images: (height, width, channels)
    params: dict[str, Any] = field(default_factory=dict)  # flow settings worth a run param
    cached: list[DataFrame] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-split counts of the written table


@dataclass
class ScoringRows:
    """Rows ready for the model: `input_column` feeds the pyfunc, `keep` columns go to gold as they are."""

    rows: DataFrame
    input_column: str
    keep: list[str]
    key: list[str]  # one gold row per key (within a partition)
    rows_in: int
    partition_by: str | None = None  # gold partition column (a date): replaced per value; None = whole table


@dataclass
class MonitorInputs:
    """A scored window's raw inputs beside the model's training rows, for drift and realized metrics."""

    batch: DataFrame  # the window's model inputs (raw columns)
    numeric: list[str]
    categorical: list[str]
    labels: DataFrame | None  # key columns + `label`, where outcomes are known now
    key: list[str]
    window_filter: Any  # a Column selecting the window's rows of the gold table


class Flow(Protocol):
    """A flow: pure DataFrame steps driven by its config section (`cfg.flow`); the stages do the I/O."""

    kind: str

    def sources(self, cfg: Config) -> list[str]:
        """Bronze datasets the features step reads (the first one is the fact table)."""

    def head(self, cfg: Config) -> str:
        """The training head the label calls for: binary, multiclass or regression."""

    def featurize(self, spark: SparkSession, cfg: Config, frames: dict[str, DataFrame]) -> FeatureSet:
        """Bronze frames (by dataset name) -> silver rows + fitted preprocessing + counts."""

    def statistics(self, cfg: Config, features: FeatureSet, recorder: Recorder) -> dict[str, Any] | None:
        """Describe the feature set (reports, plots) through the recorder; None when the flow has none."""

    def model_input(self, cfg: Config, store: DeltaStore, record: FeaturesRecord, rows: DataFrame
                    ) -> tuple[DataFrame, str]:
        """Feature-table rows -> (rows with the served model's input column, that column)."""

    def serving_meta(self, cfg: Config) -> dict[str, Any]:
        """Extra pyfunc metadata the served model needs to read its input (e.g. image decoding)."""

    def scoring_rows(self, cfg: Config, model: Any, frames: dict[str, DataFrame], dates: list[Any] | None
                     ) -> ScoringRows:
        """Source rows (bronze frames by dataset, or a stream's parsed rows as the fact frame) -> rows ready for
        the model (`model` is the resolved registered version: its meta and preprocessing); `dates` selects
        days where the flow has a date (None = every row)."""

    def monitoring_inputs(self, cfg: Config, frames: dict[str, DataFrame], dates: list[Any]
                          ) -> MonitorInputs | None:
        """A window's inputs for drift monitoring; None when the flow has no drift monitor."""

    def test_window(self, cfg: Config, table: DataFrame) -> list[Any] | None:
        """The dates of the feature table's test split, which run-all scores and monitors; None when the rows
        have no date (then the whole source table is scored and there is no drift window)."""


class ClassifiedTableFlow:
    """Defaults shared by flows that read one bronze table, train a multiclass model on its rows and have no
    dates (so no drift window): the image and text flows override only what differs."""

    def sources(self, cfg: Config) -> list[str]:
        return [cfg.features.source_table]

    def head(self, cfg: Config) -> str:
        return "multiclass"

    def model_input(self, cfg: Config, store: DeltaStore, record: FeaturesRecord, rows: DataFrame
                    ) -> tuple[DataFrame, str]:
        return rows, FEATURES

    def monitoring_inputs(self, cfg: Config, frames: dict[str, DataFrame], dates: list[Any]) -> None:
        return None

    def test_window(self, cfg: Config, table: DataFrame) -> None:
        return None

    def whole_table(self, cfg: Config, model: Any, frames: dict[str, DataFrame], dates: list[Any] | None,
                    reads: str) -> tuple[DataFrame, int]:
        """(the source table once per key, its row count) for scoring: these flows have no dates, and the
        model must read `reads` (its meta's `input`)."""
        if dates is not None:
            raise BadInput(f"the {self.kind} flow scores its whole bronze table: no --date")
        if model.meta.get("input") != reads:
            raise BadInput(f"model {model.name}{model.asked} reads {model.meta.get('input')!r}, not {reads!r}")
        raw = frames[cfg.features.source_table]
        return raw.dropDuplicates([cfg.flow.key]), raw.count()


_REGISTRY: dict[str, Callable[[], Flow]] = {}


def register(kind: str, conf: type[FlowConf]) -> Callable[[type], type]:
    """Class decorator: the flow class serves configs whose `flow.kind` is `kind`, and `conf` (its config model,
    a FlowConf subclass) validates their `flow:` section."""

    def add(cls: type) -> type:
        register_flow_conf(kind, conf)
        _REGISTRY[kind] = cls
        cls.kind = kind
        return cls

    return add


def get_flow(cfg: Config) -> Flow:
    """The Flow for `cfg.flow.kind`, importing its package (`flow.module`, else pipelines.flows.<kind>) on first
    use."""
    kind = cfg.flow.kind
    if kind not in _REGISTRY:
        importlib.import_module(cfg.flow.package)
    return _REGISTRY[kind]()
