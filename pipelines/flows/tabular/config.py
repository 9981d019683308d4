"""The tabular flow's `flow:` section: a bronze fact table's columns (+ dimension joins) -> label, split and typed
feature groups. Labels and splits are core's shared building blocks (pipelines.core.config.flows)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from pipelines.core.config import FlowConf, HashSplit, OutcomeLabel, RowSplit, Strict


class JoinConf(Strict):
    """A left join of a dimension table (bronze) onto the fact rows; the dimension must be unique on `keys`."""

    table: str
    keys: list[str]  # join key columns, same name on both sides
    columns: dict[str, str]  # dimension column -> output column name
    on_duplicates: Literal["dedupe", "fail"] = "dedupe"  # dedupe: keep one row per key (deterministic), log


class NumericGroup(Strict):
    """Numeric columns: imputed (strategy fitted on train), then assembled and scaled."""

    kind: Literal["numeric"]
    name: str = "numeric"
    columns: list[str]
    impute: Literal["mean", "median", "mode"] = "median"


class CategoricalGroup(Strict):
    """String columns: StringIndexer(handleInvalid=keep: unseen values and nulls get a slot) + one-hot."""

    kind: Literal["categorical"]
    name: str = "categorical"
    columns: list[str]
    order: Literal["frequencyDesc", "frequencyAsc", "alphabetDesc", "alphabetAsc"] = "frequencyDesc"


class BucketizedGroup(Strict):
    """Numeric columns cut into quantile buckets (boundaries fitted on train), one-hot when `one_hot`."""

    kind: Literal["bucketized"]
    name: str = "bucketized"
    columns: list[str]
    buckets: int = Field(default=10, ge=2)
    one_hot: bool = True


class CyclicalGroup(Strict):
    """Periodic columns (hour, weekday, month, wind direction) -> sin/cos pairs; column -> period."""

    kind: Literal["cyclical"]
    name: str = "cyclical"
    columns: dict[str, float]

    @field_validator("columns")
    @classmethod
    def _positive(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {c: p for c, p in v.items() if p <= 0}
        if bad:
            raise ValueError(f"periods must be > 0, got {bad}")
        return v


FeatureGroup = Annotated[NumericGroup | CategoricalGroup | BucketizedGroup | CyclicalGroup,
                         Field(discriminator="kind")]


class SelectorConf(Strict):
    """Optional UnivariateFeatureSelector after scaling (continuous features vs categorical label)."""

    enabled: bool = False
    mode: Literal["numTopFeatures", "percentile", "fpr", "fdr", "fwe"] = "fpr"
    threshold: float = 0.05


class TabularFlowConf(FlowConf):
    """Columns of a bronze fact table: clean (dedupe on `key`), join dimensions, derive, label, split, and the
    feature groups by kind. The label column of the feature table is always `label`."""

    kind: Literal["tabular"] = "tabular"
    key: list[str] = Field(default_factory=list)  # natural key: duplicates on it are removed and counted
    date_columns: list[str] = Field(default_factory=list)  # year, month, day columns -> date_name (or none)
    date_name: str = "date"
    label: OutcomeLabel
    split: RowSplit  # required: month, date_range or hash (no default that assumes dates)
    joins: list[JoinConf] = Field(default_factory=list)
    derived: dict[str, str] = Field(default_factory=dict)  # name -> Spark SQL expression, after the joins
    unknown_at_prediction: list[str] = Field(default_factory=list)  # unknown at prediction time: never inputs
    groups: list[FeatureGroup] = Field(default_factory=list)
    passthrough: list[str] = Field(default_factory=list)  # extra columns copied to the table, never inputs
    scale: bool = True
    selector: SelectorConf = SelectorConf()

    @field_validator("date_columns")
    @classmethod
    def _ymd(cls, v: list[str]) -> list[str]:
        if len(v) not in (0, 3):
            raise ValueError("date_columns names the year, month and day columns (3 names), or none")
        return v

    @field_validator("groups")
    @classmethod
    def _no_leakage(cls, v: list[Any], info: Any) -> list[Any]:
        """A feature input must be known at prediction time: the label column and post-departure columns (or
        derived columns that use them) are refused here."""
        banned = set(info.data.get("unknown_at_prediction", []))
        if "label" in info.data:
            banned.add(info.data["label"].column)
        derived = info.data.get("derived", {})
        leaks = []
        for g in v:
            for c in g.columns:
                if c in banned:
                    leaks.append(c)
                elif c in derived and any(re.search(rf"\b{re.escape(b)}\b", derived[c]) for b in banned):
                    leaks.append(f"{c} (= {derived[c]})")
        if leaks:
            raise ValueError(f"feature inputs not known at prediction time: {leaks}")
        return v

    @model_validator(mode="after")
    def _hash_key(self) -> TabularFlowConf:
        if isinstance(self.split, HashSplit) and not (self.split.key or self.key):
            raise ValueError("split by hash needs split.key or the flow's key")
        return self

    @property
    def split_key(self) -> list[str]:
        """The columns a hash split hashes: split.key, else the flow's key."""
        return (self.split.key if isinstance(self.split, HashSplit) else []) or self.key

    @property
    def has_date(self) -> bool:
        """Whether the rows have a date column (`date_name`): built from date_columns or already there."""
        return bool(self.date_columns) or not isinstance(self.split, HashSplit)
