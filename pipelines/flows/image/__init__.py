"""The image flow: bronze image bytes (labelled by folder) -> decoded, resized, normalized pixel arrays; a
multiclass CNN serves on the encoded bytes (the served model decodes them exactly like the features step)."""

from __future__ import annotations

from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.core.config import Config
from pipelines.core.logs import LOG, stage
from pipelines.flows.base import FEATURES, LABEL, ClassifiedTableFlow, FeatureSet, ScoringRows, register
from pipelines.flows.image.config import ImageFlowConf
from pipelines.flows.image.nodes import (
    PIXELS,
    SIZE,
    image_pipeline,
    label_conf,
    prepare_images,
    with_original_size,
)
from pipelines.flows.image.stats import log_image_stats
from pipelines.flows.labels import LABEL_NAME, class_names, hash_split


@register("image", ImageFlowConf)
class ImageFlow(ClassifiedTableFlow):
    kind = "image"

    def featurize(self, spark: Any, cfg: Config, frames: dict[str, DataFrame]) -> FeatureSet:
        """Dedupe, label, split -> decode (fitted PipelineModel); undecodable images are counted and left out."""
        conf = cfg.flow
        images = frames[cfg.features.source_table]
        shape = [conf.height, conf.width, conf.channels]
        with stage("features.prepare") as s:
            classes = class_names(images, label_conf(conf))
            if not classes:
                raise ValueError(f"bronze table {cfg.features.source_table!r} has no labelled images")
            prepared, counts = prepare_images(images, conf, classes)
            s.add(**counts, classes=len(classes))
        with stage("features.fit") as s:
            model = image_pipeline(conf).fit(prepared.filter(F.col("split") == "train"))  # stateless: no pass
            s.add(stages=len(model.stages), shape="x".join(map(str, shape)))
        decoded = (model.transform(with_original_size(prepared, conf.content_column))
                   .select(conf.key, LABEL_NAME, LABEL, "split", SIZE, "width", "height",
                           F.col(PIXELS).alias(FEATURES))
                   .persist(StorageLevel.MEMORY_AND_DISK))
        with stage("features.decode") as s:
            agg = decoded.agg(F.count("*").alias("n"), F.count(FEATURES).alias("ok")).first()
            counts["excluded_undecodable"] = int(agg["n"] - agg["ok"])
            counts["rows_out"] = int(agg["ok"])
            excluded = counts["excluded_unlabeled"] + counts["excluded_undecodable"]
            if counts["rows_in"] != counts["rows_out"] + counts["duplicates_removed"] + excluded:
                raise RuntimeError(f"image rows do not add up: {counts}")
            if counts["excluded_undecodable"]:
                LOG.warning("features: %d images did not decode (ingest should have quarantined them)",
                            counts["excluded_undecodable"])
            s.add(**counts)
        good = decoded.filter(F.col(FEATURES).isNotNull())
        params = {"image.key": conf.key, "image.shape": "x".join(map(str, shape)), "image.resample": conf.resample,
                  "image.normalize": conf.normalize, **{f"split.{k}": v for k, v in conf.split.model_dump().items()}}
        return FeatureSet(good.select(conf.key, LABEL_NAME, LABEL, "split", FEATURES, SIZE), model, counts,
                          classes, shape, params, cached=[decoded], extra={"good": good})

    def statistics(self, cfg: Config, features: FeatureSet, recorder: Any) -> dict[str, Any] | None:
        if not cfg.features.stats.enabled:
            return None
        return log_image_stats(features.extra["good"], cfg.flow, features.classes or [], features.input_shape or [],
                               recorder)

    def model_input(self, cfg: Config, store: Any, record: Any, rows: DataFrame) -> tuple[DataFrame, str]:
        """The served model reads encoded image bytes: join them from bronze (the version the features run read)."""
        conf, source = cfg.flow, cfg.features.source_table
        images = store.read(cfg.catalog.path(source), record.bronze_versions.get(source)).select(
            conf.key, conf.content_column)
        return rows.join(images, conf.key), conf.content_column

    def serving_meta(self, cfg: Config) -> dict[str, Any]:
        c = cfg.flow
        return {"input": "image", "decode": {"height": c.height, "width": c.width, "channels": c.channels,
                                             "resample": c.resample, "normalize": c.normalize}}

    def scoring_rows(self, cfg: Config, model: Any, frames: dict[str, DataFrame], dates: list[Any] | None
                     ) -> ScoringRows:
        """Every image of the bronze table, once per key, with its true class (when labelled) and its split."""
        c = cfg.flow
        rows, rows_in = self.whole_table(cfg, model, frames, dates, "image")
        rows = rows.withColumn(LABEL_NAME, F.col(c.label_column).cast("string"))
        return ScoringRows(hash_split(rows, c.key, c.split).withColumnRenamed(LABEL_NAME, "true_label"),
                           c.content_column, [c.key, "split", "true_label"], [c.key], rows_in)
