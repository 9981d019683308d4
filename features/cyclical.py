"""CyclicalEncoder: periodic values (hour of day, day of week, month, compass direction) as sin/cos pairs.

A raw hour puts 23:00 and 00:00 far apart; on the unit circle they are neighbours. Each input column c with
period p becomes sin(2*pi*c/p) and cos(2*pi*c/p); a null input becomes (0, 0), the circle's centre, which is
equally far from every value (no imputation needed, and the model can tell it from any real value).
The output is one vector column [sin(c1), cos(c1), sin(c2), cos(c2), ...] whose ML attributes name every slot,
so VectorAssembler carries the names through to the final feature vector.
"""

from __future__ import annotations

import math

from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.functions import array_to_vector
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCols, HasOutputCol
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F


class CyclicalEncoder(
    Transformer, HasInputCols, HasOutputCol, DefaultParamsReadable, DefaultParamsWritable
):
    """Encode each input column as (sin, cos) of its phase in `periods` (one period per input column)."""

    periods: Param[list[float]] = Param(
        Params._dummy(), "periods", "period of each input column (same order as inputCols)",
        typeConverter=TypeConverters.toListFloat,
    )

    @keyword_only
    def __init__(
        self, *, inputCols: list[str] | None = None, periods: list[float] | None = None,
        outputCol: str | None = None,
    ) -> None:
        super().__init__()
        kwargs = self._input_kwargs
        self.setParams(**kwargs)

    @keyword_only
    def setParams(
        self, *, inputCols: list[str] | None = None, periods: list[float] | None = None,
        outputCol: str | None = None,
    ) -> CyclicalEncoder:
        """Set any of inputCols, periods, outputCol."""
        kwargs = self._input_kwargs
        return self._set(**kwargs)

    def setInputCols(self, value: list[str]) -> CyclicalEncoder:
        return self._set(inputCols=value)

    def setOutputCol(self, value: str) -> CyclicalEncoder:
        return self._set(outputCol=value)

    def setPeriods(self, value: list[float]) -> CyclicalEncoder:
        return self._set(periods=value)

    def getPeriods(self) -> list[float]:
        return self.getOrDefault(self.periods)

    def slot_names(self) -> list[str]:
        """Names of the output slots, in order: c1_sin, c1_cos, c2_sin, ..."""
        return [f"{c}_{f}" for c in self.getInputCols() for f in ("sin", "cos")]

    def _check(self) -> None:
        cols, periods = self.getInputCols(), self.getPeriods()
        if len(cols) != len(periods):
            raise ValueError(f"CyclicalEncoder: {len(cols)} inputCols but {len(periods)} periods")
        if any(p <= 0 for p in periods):
            raise ValueError(f"CyclicalEncoder: periods must be > 0, got {periods}")

    def _transform(self, dataset: DataFrame) -> DataFrame:
        self._check()
        parts: list[Column] = []
        for c, p in zip(self.getInputCols(), self.getPeriods(), strict=True):
            angle = F.col(c).cast("double") * F.lit(2 * math.pi / p)
            parts += [F.coalesce(F.sin(angle), F.lit(0.0)), F.coalesce(F.cos(angle), F.lit(0.0))]
        names = self.slot_names()
        meta = {"ml_attr": {"attrs": {"numeric": [{"idx": i, "name": n} for i, n in enumerate(names)]},
                            "num_attrs": len(names)}}
        vec = array_to_vector(F.array(*parts))
        return dataset.withColumn(self.getOutputCol(), vec.alias(self.getOutputCol(), metadata=meta))
