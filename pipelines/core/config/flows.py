"""The `flow` section: what a pipeline's rows become. Core knows no flow by name: each flow's package defines its
own config model (a `FlowConf` subclass, in its folder's config.py) and registers it for its `flow.kind`; the
loader validates a profile's `flow:` mapping with the model registered for its kind, importing the flow's package
first (`flow.module`, else pipelines.flows.<kind>).

Also here: the building blocks flow models share (labels, splits).
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from pipelines.core.config.base import Strict

LABEL = "label"  # the label column of every feature table


# ---- labels of one column: binary or regression --------------------------------------------------------------------
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


OutcomeLabel = Annotated[ThresholdLabel | CategoryLabel | RegressionLabel, Field(discriminator="kind")]


# ---- splits by date or hashed key ----------------------------------------------------------------------------------
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


RowSplit = Annotated[MonthSplit | DateRangeSplit | HashSplit, Field(discriminator="by")]


# ---- multiclass label, hashed split of a single key ----------------------------------------------------------------
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


# ---- the section itself and the registry of flow models ---------------------------------------------------------
BUILTIN_FLOWS = "pipelines.flows"  # the flows that ship with the project: one sub-package per kind


class FlowConf(Strict):
    """Base of every flow's config model: `kind` picks the flow; `module` names the Python package that registers
    it when that is not pipelines.flows.<kind> (a flow kept outside the project: `flow.module: my_flows.toy`)."""

    kind: str
    module: str | None = None

    @property
    def package(self) -> str:
        """The package whose import registers this flow (its Flow class and this model)."""
        return flow_package(self.kind, self.module)


_MODELS: dict[str, type[FlowConf]] = {}


def register_flow_conf(kind: str, model: type[FlowConf]) -> None:
    """Validate `flow:` sections of kind `kind` with `model` (called by pipelines.flows.register)."""
    field = model.model_fields.get("kind")
    if not issubclass(model, FlowConf) or field is None or field.default != kind:
        raise TypeError(f"{model.__name__} must subclass FlowConf with `kind: Literal[{kind!r}] = {kind!r}`")
    _MODELS[kind] = model


def flow_package(kind: str, module: str | None = None) -> str:
    """The package that registers flow `kind`: `module` when given, else the project's own pipelines.flows.<kind>."""
    return module or f"{BUILTIN_FLOWS}.{kind}"


def flow_kinds() -> list[str]:
    """Every flow kind known now: the project's own (the sub-packages of pipelines/flows/) and any registered."""
    spec = importlib.util.find_spec(BUILTIN_FLOWS)
    paths = list(spec.submodule_search_locations or []) if spec else []
    return sorted({m.name for m in pkgutil.iter_modules(paths) if m.ispkg} | set(_MODELS))


def _error(section: dict, field: str, message: str) -> ValidationError:
    """A validation error at `flow.<field>` that the loader reports like any other (key, message, file)."""
    return ValidationError.from_exception_data("flow", [InitErrorDetails(
        type=PydanticCustomError("flow_kind", message), loc=(field,), input=section)])


def _import(package: str) -> bool:
    """Import a flow's package (which registers it); False when there is no such package. A package that exists
    but fails on one of its own imports raises: that is a bug to see, not an unknown kind."""
    try:
        importlib.import_module(package)
    except ModuleNotFoundError as e:
        if e.name is None or not (package == e.name or package.startswith(e.name + ".")):
            raise
        return False
    return True


def flow_model(section: dict) -> type[FlowConf]:
    """The config model of a `flow:` mapping: the one registered for its kind, after importing the flow's
    package (`module`, else pipelines.flows.<kind>), which registers it. A kind nobody registers, or a `module`
    that does not import or registers another kind, is a config error at flow.kind or flow.module."""
    kind, module = section.get("kind"), section.get("module")
    if not isinstance(kind, str) or not kind:
        raise _error(section, "kind", f"missing kind; one of {flow_kinds()}")
    if isinstance(module, str):
        if not _import(module):
            raise _error(section, "module", f"no module {module!r} on the Python path")
        owner = _MODELS[kind].__module__ if kind in _MODELS else ""
        if not (owner == module or owner.startswith(module + ".")):
            raise _error(section, "module", f"{module!r} registers no flow of kind {kind!r}")
    elif kind not in _MODELS:
        _import(flow_package(kind))
    if kind not in _MODELS:
        raise _error(section, "kind", f"unknown kind {kind!r}; kinds are {flow_kinds()} (a flow kept outside "
                                      "pipelines/flows/ names its package in flow.module)")
    return _MODELS[kind]
