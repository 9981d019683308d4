"""Image flow nodes: bronze image bytes -> deduplicated, labelled, hash-split rows -> one stateless pyspark.ml
stage (features.image.ImageDecoder: decode, convert, resize, normalize) fitted into a PipelineModel, so scoring
applies exactly the same decoding."""

from __future__ import annotations

import io

import pandas as pd
from pyspark.ml import Pipeline
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from features.image import ImageDecoder
from pipelines.core.config import ClassLabelConf
from pipelines.flows.base import LABEL
from pipelines.flows.image.config import ImageFlowConf
from pipelines.flows.labels import hash_split, with_labels

PIXELS = "image__pixels"  # the ImageDecoder's output column (double underscore: cannot clash with bronze)
SIZE = "size"  # file size in bytes, as bronze names it
WIDTH, HEIGHT = "width", "height"  # original image size in pixels, as bronze names it


def image_pipeline(conf: ImageFlowConf) -> Pipeline:
    """The unfitted preprocessing Pipeline: one ImageDecoder from `conf.content_column` to PIXELS."""
    return Pipeline(stages=[ImageDecoder(inputCol=conf.content_column, outputCol=PIXELS, height=conf.height,
                                         width=conf.width, channels=conf.channels, resample=conf.resample,
                                         normalize=conf.normalize)])


def label_conf(conf: ImageFlowConf) -> ClassLabelConf:
    """The image label as a class label: the bronze label column's values, every one a class."""
    return ClassLabelConf(column=conf.label_column)


def prepare_images(images: DataFrame, conf: ImageFlowConf, classes: list[str]) -> tuple[DataFrame, dict[str, int]]:
    """Dedupe on the key, add `label_name`, `label` (index in `classes`) and `split`; return rows and counts
    (rows_in == rows_out + duplicates_removed + excluded_unlabeled).

    Of rows sharing a key, the one with the smallest hash of (content, label) is kept: deterministic, so a rerun
    builds the same rows. Rows whose label is null or not in `classes` are excluded and counted.
    """
    missing = [c for c in (conf.key, conf.content_column, conf.label_column) if c not in images.columns]
    if missing:
        raise ValueError(f"image columns {missing} are not in the bronze table ({images.columns})")
    agg = images.agg(F.count("*").alias("n"), F.countDistinct(conf.key).alias("keys"),
                     F.count(F.when(F.col(conf.key).isNull(), 1)).alias("null_keys")).first()
    if agg["null_keys"]:
        raise ValueError(f"{agg['null_keys']} image rows have a null {conf.key}")
    rows_in, keys = int(agg["n"]), int(agg["keys"])
    deduped = images
    if keys < rows_in:  # only then pay for the window (it shuffles the image bytes)
        w = Window.partitionBy(conf.key).orderBy(F.col("_dup_order").asc())
        deduped = (images.withColumn("_dup_order", F.xxhash64(conf.content_column, conf.label_column))
                   .withColumn("_dup_rank", F.row_number().over(w)).filter("_dup_rank = 1")
                   .drop("_dup_rank", "_dup_order"))
    labelled = with_labels(deduped, label_conf(conf), classes)
    known = labelled.filter(F.col(LABEL).isNotNull())
    rows = known.count()
    counts = {"rows_in": rows_in, "duplicates_removed": rows_in - keys, "excluded_unlabeled": keys - rows,
              "rows_out": rows}
    return hash_split(known, conf.key, conf.split), counts


def _header_size(content: pd.Series) -> pd.DataFrame:
    """(width, height) from each image's header (Pillow opens lazily: no pixels decoded); nulls when unreadable."""
    from PIL import Image

    sizes: list[tuple[int | None, int | None]] = []
    for data in content:
        try:
            with Image.open(io.BytesIO(bytes(data))) as img:
                sizes.append(img.size)
        except Exception:  # not an image: no size (the decoder will exclude the row and count it)
            sizes.append((None, None))
    return pd.DataFrame(sizes, columns=[WIDTH, HEIGHT], dtype="Int32")


def with_original_size(images: DataFrame, content_column: str) -> DataFrame:
    """`width`, `height` and `size` (bytes) of the original file: bronze's columns, else read from the bytes."""
    out = images
    if SIZE not in out.columns:
        out = out.withColumn(SIZE, F.length(F.col(content_column)).cast("bigint"))
    if WIDTH in out.columns and HEIGHT in out.columns:
        return out
    header = F.pandas_udf(_header_size, f"{WIDTH} int, {HEIGHT} int")
    return (out.withColumn("_hdr", header(F.col(content_column)))
            .withColumn(WIDTH, F.col(f"_hdr.{WIDTH}")).withColumn(HEIGHT, F.col(f"_hdr.{HEIGHT}")).drop("_hdr"))


