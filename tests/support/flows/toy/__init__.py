"""A fourth flow, kept outside the project as a user's own would be: numeric measurements of a row -> a scaled
vector -> a multiclass model that serves on the vectors (the assembler and scaler ship inside the served model).

It is the whole of a flow: this package (the Flow, registered with its config model) and a conf profile whose
`flow.module` names the package (profile.yaml beside this file). Nothing of the project changes to add it; it uses
the shared pieces every flow may use: pipelines.flows.base (the Flow hooks), pipelines.flows.labels (class labels,
hashed split) and the config building blocks of pipelines.core.config.
"""

from __future__ import annotations

from typing import Any

from pyspark import StorageLevel
from pyspark.ml import Pipeline
from pyspark.ml.feature import StandardScaler, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.core.config import Config
from pipelines.core.errors import BadInput
from pipelines.flows.base import FEATURES, LABEL, VECTOR_COL, ClassifiedTableFlow, FeatureSet, ScoringRows, register
from pipelines.flows.labels import LABEL_NAME, class_names, hash_split, with_labels
from tests.support.flows.toy.config import ToyFlowConf

ASSEMBLED = "toy_assembled"


def _stages(conf: ToyFlowConf) -> list[Any]:
    """Numbers -> one vector (-> standardized): the preprocessing the served model carries."""
    if not conf.scale:
        return [VectorAssembler(inputCols=conf.columns, outputCol=VECTOR_COL, handleInvalid="error")]
    return [VectorAssembler(inputCols=conf.columns, outputCol=ASSEMBLED, handleInvalid="error"),
            StandardScaler(inputCol=ASSEMBLED, outputCol=VECTOR_COL, withMean=True, withStd=True)]


def _vectors(model: Any, rows: DataFrame) -> DataFrame:
    return model.transform(rows).withColumn(FEATURES, vector_to_array(VECTOR_COL, "float32"))


@register("toy", ToyFlowConf)
class ToyFlow(ClassifiedTableFlow):
    """One bronze table, no dates: the shared defaults of ClassifiedTableFlow, plus the steps below."""

    kind = "toy"

    def featurize(self, spark: Any, cfg: Config, frames: dict[str, DataFrame]) -> FeatureSet:
        """Dedupe on the key, label (rows with no class or a missing number are left out and counted), split,
        fit the preprocessing on train."""
        conf = cfg.flow
        raw = frames[cfg.features.source_table]
        classes = class_names(raw, conf.label)
        rows_in = raw.count()
        unique = raw.dropDuplicates([conf.key])
        labelled = with_labels(unique, conf.label, classes)
        complete = F.col(LABEL).isNotNull()
        for c in conf.columns:
            complete &= F.col(c).isNotNull()
        kept = hash_split(labelled.filter(complete), conf.key, conf.split).persist(StorageLevel.MEMORY_AND_DISK)
        n_unique, rows_out = unique.count(), kept.count()
        counts = {"rows_in": rows_in, "duplicates_removed": rows_in - n_unique,
                  "excluded_incomplete": n_unique - rows_out, "rows_out": rows_out}
        model = Pipeline(stages=_stages(conf)).fit(kept.filter(F.col("split") == "train"))
        table = _vectors(model, kept).select(conf.key, LABEL_NAME, LABEL, "split", FEATURES)
        params = {"toy.columns": ",".join(conf.columns), "toy.scale": conf.scale}
        return FeatureSet(table, model, counts, classes, None, params, cached=[kept])

    def statistics(self, cfg: Config, features: FeatureSet, recorder: Any) -> None:
        return None

    def serving_meta(self, cfg: Config) -> dict[str, Any]:
        return {"input": "features"}

    def scoring_rows(self, cfg: Config, model: Any, frames: dict[str, DataFrame], dates: list[Any] | None
                     ) -> ScoringRows:
        """Every row of the bronze table, once per key, through the model's own preprocessing."""
        conf = cfg.flow
        rows, rows_in = self.whole_table(cfg, model, frames, dates, "features")
        missing = sorted(set(conf.columns) - set(rows.columns))
        if missing:
            raise BadInput(f"input rows lack the columns {missing}")
        labelled = with_labels(rows, conf.label, model.meta["classes"]) if conf.label.column in rows.columns else \
            rows.withColumn(LABEL_NAME, F.lit(None).cast("string"))
        vectors = _vectors(model.preprocessing(), hash_split(labelled, conf.key, conf.split))
        return ScoringRows(vectors.withColumnRenamed(LABEL_NAME, "true_label"), FEATURES,
                           [conf.key, "split", "true_label"], [conf.key], rows_in)
