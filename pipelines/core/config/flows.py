"""The `flow` section: what a pipeline's rows become, a union discriminated on `kind`.

tabular: columns of a bronze fact table (+ dimension joins) -> label, split, typed feature groups;
image: image bytes -> decoded, resized, normalized arrays; text: text -> token/n-gram/Word2Vec vector.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from pipelines.core.config.base import Strict

LABEL = "label"  # the label column of every feature table


# ---- tabular: label ------------------------------------------------------------------------------------------
class ThresholdLabel(Strict):
    """Binary: 1 when `column` > `threshold`, 0 otherwise, null when `column` is null (no outcome)."""

    kind: Literal["threshold"] = "threshold"
    column: str
    threshold: float


class CategoryLabel(Strict):
    """Binary: 1 when the value of `column` is in `positive`, 0 otherwise, null when null."""

    kind: Literal["category"] = "category"
    column: str
    positive: list[str] = Field(min_length=1)


class RegressionLabel(Strict):
    """Regression: the value of `column` as a double."""

    kind: Literal["regression"] = "regression"
    column: str


TabularLabel = Annotated[ThresholdLabel | CategoryLabel | RegressionLabel, Field(discriminator="kind")]


# ---- tabular: split ------------------------------------------------------------------------------------------
class MonthSplit(Strict):
    """Deterministic split by the month of the row's date; months listed nowhere get split 'excluded'."""

    by: Literal["month"] = "month"
    train: list[int] = Field(default_factory=lambda: list(range(1, 10)))
    validation: list[int] = Field(default_factory=lambda: [10, 11])
    test: list[int] = Field(default_factory=lambda: [12])

    @field_validator("train", "validation", "test")
    @classmethod
    def _months(cls, v: list[int]) -> list[int]:
        bad = [m for m in v if not 1 <= m <= 12]
        if bad:
            raise ValueError(f"months must be 1..12, got {bad}")
        return v

    @field_validator("test")
    @classmethod
    def _disjoint(cls, v: list[int], info: Any) -> list[int]:
        seen: dict[int, str] = {}
        for name in ("train", "validation"):
            for m in info.data.get(name, []):
                seen.setdefault(m, name)
        for m in v:
            seen.setdefault(m, "test")
        lists = {"train": info.data.get("train", []), "validation": info.data.get("validation", []),
                 "test": v}
        overlap = sorted({m for name, ms in lists.items() for m in ms if seen[m] != name})
        if overlap:
            raise ValueError(f"months {overlap} are in more than one split")
        if not info.data.get("train"):
            raise ValueError("the train split needs at least one month")
        return v


IsoDate = Annotated[date, Field(strict=False)]  # YAML and --set give ISO strings


class DateRangeSplit(Strict):
    """Split by inclusive ISO date ranges [first, last]; dates in no range get split 'excluded'."""

    by: Literal["date_range"] = "date_range"
    train: list[IsoDate]
    validation: list[IsoDate] = Field(default_factory=list)
    test: list[IsoDate] = Field(default_factory=list)

    @field_validator("train", "validation", "test")
    @classmethod
    def _range(cls, v: list[date]) -> list[date]:
        if v and (len(v) != 2 or v[0] > v[1]):
            raise ValueError("a date range is [first, last] with first <= last")
        return v

    @model_validator(mode="after")
    def _disjoint(self) -> DateRangeSplit:
        if not self.train:
            raise ValueError("the train split needs a date range")
        ranges = sorted((r[0], r[1], n) for n, r in (("train", self.train), ("validation", self.validation),
                                                     ("test", self.test)) if r)
        for (_, end, a), (start, _, b) in zip(ranges, ranges[1:], strict=False):
            if start <= end:
                raise ValueError(f"date ranges of {a} and {b} overlap")
        return self


class _HashFractions(Strict):
    validation: float = Field(default=0.15, ge=0, lt=1)
    test: float = Field(default=0.15, gt=0, lt=1)
    seed: int = 7

    @model_validator(mode="after")
    def _room_for_train(self) -> _HashFractions:
        if self.validation + self.test >= 1:
            raise ValueError("validation + test must leave rows for train (sum < 1)")
        return self


class HashSplit(_HashFractions):
    """Deterministic split by a hash of `key` (default: the flow's key): a row keeps its split across runs."""

    by: Literal["hash"] = "hash"
    key: list[str] = Field(default_factory=list)


TabularSplit = Annotated[MonthSplit | DateRangeSplit | HashSplit, Field(discriminator="by")]


# ---- tabular: joins, groups, selector --------------------------------------------------------------------------
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


class TabularFlowConf(Strict):
    """Columns of a bronze fact table: clean (dedupe on `key`), join dimensions, derive, label, split, and the
    feature groups by kind. The label column of the feature table is always `label`."""

    kind: Literal["tabular"] = "tabular"
    key: list[str] = Field(default_factory=list)  # natural key: duplicates on it are removed and counted
    date_columns: list[str] = Field(default_factory=list)  # year, month, day columns -> date_name (or none)
    date_name: str = "date"
    label: TabularLabel
    split: TabularSplit  # required: month, date_range or hash (no default that assumes dates)
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


# ---- image and text ------------------------------------------------------------------------------------------
class HashSplitConf(_HashFractions):
    """Deterministic split by a hash of the row key: a row keeps its split across runs and data versions."""

    by: Literal["hash"] = "hash"
    key_segments: int = Field(default=0, ge=0)  # > 0: hash only the key's last N '/'-separated parts (paths)


class ClassLabelConf(Strict):
    """Multiclass label from a string column: `classes` in order (index = class id); values outside them go to
    class `other` when set, else the row is excluded (and counted). classes None = every value, sorted."""

    column: str
    classes: list[str] | None = None
    other: str | None = None


class ImageFlowConf(Strict):
    """Image featurization: bytes -> decoded, resized, normalized (height, width, channels) float array."""

    kind: Literal["image"] = "image"
    key: str = "path"
    content_column: str = "content"
    label_column: str = "label"  # the bronze label (folder name); its distinct values, sorted, are the classes
    height: int = Field(default=8, ge=1)
    width: int = Field(default=8, ge=1)
    channels: Literal[1, 3] = 1
    resample: Literal["nearest", "bilinear", "bicubic", "lanczos"] = "bilinear"
    normalize: bool = True
    split: HashSplitConf = HashSplitConf()
    grid_per_class: int = Field(default=8, ge=1)  # images per class in the sample grid PNG


class TextFlowConf(Strict):
    """Text featurization as pyspark.ml stages: clean -> RegexTokenizer -> StopWordsRemover -> NGram ->
    HashingTF + IDF (tokens and n-grams) and Word2Vec -> one vector. A size of 0 turns a branch off."""

    kind: Literal["text"] = "text"
    key: str = "id_str"
    text_column: str = "text"
    label: ClassLabelConf = ClassLabelConf(column="source")
    split: HashSplitConf = HashSplitConf()
    strip_urls: bool = True  # URLs -> the token "url" (they say "a link", not which one)
    token_pattern: str = "[^\\w#@']+"  # RegexTokenizer gaps pattern: hashtags, mentions and apostrophes stay
    min_token_length: int = Field(default=2, ge=1)
    stop_words: bool = True
    extra_stop_words: list[str] = Field(default_factory=list)
    ngram: int = Field(default=2, ge=0)  # 0 = no n-gram branch
    num_features: int = Field(default=4096, ge=0)  # HashingTF size of each branch (tokens, n-grams); 0 = off
    idf_min_doc_freq: int = Field(default=2, ge=0)
    word2vec_size: int = Field(default=50, ge=0)  # 0 = no Word2Vec branch
    word2vec_min_count: int = Field(default=5, ge=1)
    word2vec_max_iter: int = Field(default=1, ge=1)
    seed: int = 7


FlowConf = Annotated[TabularFlowConf | ImageFlowConf | TextFlowConf, Field(discriminator="kind")]
FLOW_KINDS = ("tabular", "image", "text")
