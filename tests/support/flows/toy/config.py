"""The toy flow's `flow:` section: numeric measurement columns, a class column, a hashed split."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipelines.core.config import ClassLabelConf, FlowConf, HashSplitConf


class ToyFlowConf(FlowConf):
    """Rows of one bronze table, keyed by `key`: the `columns` (numbers) assembled into one vector, standardized
    (mean and deviation fitted on train) when `scale`; the class from `label`, the split by a hash of the key."""

    kind: Literal["toy"] = "toy"
    key: str
    columns: list[str] = Field(min_length=1)
    label: ClassLabelConf
    split: HashSplitConf = HashSplitConf()
    scale: bool = True
