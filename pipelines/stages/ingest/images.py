"""Image ingestion: landed image folders -> a bronze Delta table of bytes, read with Spark's binaryFile source.

Each file is decoded once (Pillow) to prove it is an image; corrupt or empty files are quarantined as files with
the reason. The label is the name of the folder holding the file. Files the glob filter excludes (notes, thumbnail
databases) are counted and logged as ignored, never silently skipped.
"""

from __future__ import annotations

import fnmatch
import io
import math
from collections.abc import Iterator

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.core.config import Config, SourceConf
from pipelines.core.delta import DeltaStore
from pipelines.core.files import FileInfo, from_spark_path, spark_input
from pipelines.core.logs import LOG

TARGET_FILE_BYTES = 128 * 1024 * 1024  # one Parquet file per ~128 MB of image bytes: no small-files problem
DECODED_SCHEMA = ("path string, label string, content binary, width int, height int, mode string, size bigint, "
                  "_reason string")


def split_by_filter(files: list[FileInfo], glob_filter: str) -> tuple[list[FileInfo], list[FileInfo]]:
    """(files the filter keeps, files it ignores) by file name."""
    keep = [f for f in files if fnmatch.fnmatch(f.uri.rsplit("/", 1)[-1], glob_filter)]
    return keep, [f for f in files if f not in keep]


def decode_batch(paths: pd.Series, contents: pd.Series, label_from_folder: bool) -> pd.DataFrame:
    """Decode each image's header and pixels; return its size and mode, or the reason it is not an image."""
    from PIL import Image

    rows = []
    for path, content in zip(paths, contents, strict=True):
        data = bytes(content) if content is not None else b""
        label = path.rstrip("/").rsplit("/", 2)[-2] if label_from_folder else None
        width = height = mode = reason = None
        if not data:
            reason = "empty file"
        else:
            try:
                with Image.open(io.BytesIO(data)) as img:
                    img.load()
                    (width, height), mode = img.size, img.mode
            except Exception as e:  # Pillow raises many types for corrupt data; each is a quarantine reason
                detail = str(e).split(" <_io.")[0]  # Pillow appends the buffer's repr: not useful to a reader
                reason = f"not a decodable image: {type(e).__name__}: {detail}"
        rows.append((path, label, data, width, height, mode, len(data), reason))
    return pd.DataFrame(rows, columns=["path", "label", "content", "width", "height", "mode", "size", "_reason"])


def decode_images(files: DataFrame, label_from_folder: bool) -> DataFrame:
    """binaryFile rows (path, content) -> path, label, content, width, height, mode, size, _reason."""
    def fn(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            yield decode_batch(pdf["path"].map(from_spark_path), pdf["content"], label_from_folder)

    return files.mapInPandas(fn, DECODED_SCHEMA)


def read_images(spark: SparkSession, uris: list[str]) -> DataFrame:
    """The given files through the binaryFile source (`path` as Spark names it: decode_images maps it back to
    the listing's URI); a file removed after Spark listed it gives no row, for the caller to report."""
    return (spark.read.format("binaryFile").option("ignoreMissingFiles", "true")
            .load([spark_input(u) for u in uris]).select("path", "content"))


def ingest_image_files(spark: SparkSession, cfg: Config, store: DeltaStore, src: SourceConf,
                       run_id: str, files: list[FileInfo]) -> tuple[dict[str, str | None], int | None]:
    """Decode and write the given image files; return {file uri: quarantine reason or None} for every file
    Spark read, and the version."""
    decoded = decode_images(read_images(spark, [f.uri for f in files]), src.label_from_folder).cache()
    try:
        status = {r["path"]: r["_reason"] for r in decoded.select("path", "_reason").collect()}
        good = decoded.filter(F.col("_reason").isNull()).drop("_reason")
        good_bytes = sum(f.size for f in files if f.uri in status and status[f.uri] is None)
        version = None
        if good_bytes or any(r is None for r in status.values()):
            out = (good.withColumn("_source_file", F.col("path")).withColumn("_run_id", F.lit(run_id))
                   .coalesce(max(1, math.ceil(good_bytes / TARGET_FILE_BYTES))))
            version = store.write(out, cfg.catalog.path(src.table), "append", metadata={"run_id": run_id})
        for uri, reason in status.items():
            if reason:
                LOG.warning("quarantined image %s: %s", uri, reason)
        return status, version
    finally:
        decoded.unpersist()
