"""The text flow: keyed texts with a class column -> text stages fitted on train -> a float vector per row; a
multiclass MLP serves on the vectors (the text stages ship inside the served model)."""

from __future__ import annotations

from typing import Any

from pyspark import StorageLevel
from pyspark.ml import Pipeline
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.core.config import Config
from pipelines.core.errors import BadInput
from pipelines.core.logs import stage
from pipelines.flows.base import FEATURES, VECTOR_COL, ClassifiedTableFlow, FeatureSet, ScoringRows, register
from pipelines.flows.labels import LABEL_NAME, class_names, hash_split, with_labels
from pipelines.flows.text.config import TextFlowConf
from pipelines.flows.text.nodes import feature_table, prepare_text, text_params, text_report, text_stages


@register("text", TextFlowConf)
class TextFlow(ClassifiedTableFlow):
    kind = "text"

    def featurize(self, spark: Any, cfg: Config, frames: dict[str, DataFrame]) -> FeatureSet:
        conf = cfg.flow
        tweets = frames[cfg.features.source_table]
        with stage("features.text.prepare") as s:
            classes = class_names(tweets, conf.label)
            rows, counts = prepare_text(tweets, conf, classes)
            rows = rows.persist(StorageLevel.MEMORY_AND_DISK)
            s.add(classes=len(classes), **counts)
        with stage("features.text.fit") as s:
            train = rows.filter(F.col("split") == "train")
            model = Pipeline(stages=text_stages(conf, VECTOR_COL)).fit(train)
            s.add(stages=len(model.stages))
        return FeatureSet(feature_table(model.transform(rows), conf), model, counts, classes, None,
                          text_params(conf), cached=[rows], extra={"train": train})

    def statistics(self, cfg: Config, features: FeatureSet, recorder: Any) -> dict[str, Any] | None:
        """Top tokens per class, Word2Vec vocabulary and tokenized samples (text_report.json)."""
        with stage("features.text.report") as s:
            report = text_report(features.model, features.extra["train"], cfg.flow)
            recorder.report(report, "text_report.json")
            s.add(word2vec_vocabulary=report["word2vec_vocabulary"])
        return report

    def serving_meta(self, cfg: Config) -> dict[str, Any]:
        return {"input": "features"}

    def scoring_rows(self, cfg: Config, model: Any, frames: dict[str, DataFrame], dates: list[Any] | None
                     ) -> ScoringRows:
        """Every text of the bronze table, once per key, through the model's own text stages."""
        c = cfg.flow
        rows, rows_in = self.whole_table(cfg, model, frames, dates, "features")
        if c.text_column not in rows.columns:
            raise BadInput(f"input rows lack the text column {c.text_column!r}")
        labeled = with_labels(rows, c.label, model.meta["classes"]) if c.label.column in rows.columns else \
            rows.withColumn(LABEL_NAME, F.lit(None).cast("string"))
        vectors = model.preprocessing().transform(hash_split(labeled, c.key, c.split))
        out = (vectors.withColumn(FEATURES, vector_to_array(VECTOR_COL, "float32"))
               .withColumnRenamed(LABEL_NAME, "true_label"))
        return ScoringRows(out, FEATURES, [c.key, "split", "true_label"], [c.key], rows_in)
