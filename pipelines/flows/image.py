"""Image flow features: bronze image bytes -> silver table of fixed-shape pixel arrays, one split per image.

The featurization is one stateless pyspark.ml stage (features.image.ImageDecoder: decode, convert, resize,
normalize), fitted into a PipelineModel so that scoring applies exactly the same decoding. `prepare_images` is a
pure DataFrame step (dedupe, labels, hash split); `run_features` does the I/O: bronze at its latest version in,
one new silver version out, and one MLflow run with the tags training looks up plus per-class statistics and
PNG plots (sample grid, class counts, mean image per class). Only aggregates and a few images per class reach
the driver.
"""

from __future__ import annotations

import io
import math
import re
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.ml import Pipeline
from pyspark.ml.functions import array_to_vector
from pyspark.ml.stat import Summarizer
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from pipelines.core.config import ClassLabelConf, Config, ImageFlowConf
from pipelines.core.delta import DeltaStore
from pipelines.core.logs import LOG, stage
from pipelines.core.tracking import job_run
from pipelines.features import ensure_features_package
from pipelines.flows.common import (
    FEATURES,
    LABEL,
    LABEL_NAME,
    SPLITS,
    FlowFeatures,
    class_names,
    hash_split,
    read_source,
    with_labels,
    write_features,
)

JOB = "features"
PIXELS = "image__pixels"  # the ImageDecoder's output column (double underscore: cannot clash with bronze)
SIZE = "size"  # file size in bytes, as bronze names it
WIDTH, HEIGHT = "width", "height"  # original image size in pixels, as bronze names it
MAX_PLOT_CLASSES = 50  # plots show at most this many classes (the JSON report has all)
MAX_SIZES_PER_CLASS = 10  # most common original (width, height) pairs reported per class


def image_pipeline(conf: ImageFlowConf) -> Pipeline:
    """The unfitted preprocessing Pipeline: one ImageDecoder from `conf.content_column` to PIXELS."""
    ensure_features_package()
    from features.image import ImageDecoder

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


def run_features(spark: SparkSession, cfg: Config, store: DeltaStore) -> FlowFeatures:
    """Bronze images -> dedupe, label, split -> decode (fitted PipelineModel) -> silver, as one MLflow run."""
    conf, fc = cfg.flow, cfg.features
    shape = [conf.height, conf.width, conf.channels]
    with job_run(cfg, JOB) as active:
        run_id = active.info.run_id
        with stage("features.read") as s:
            images, bronze_version = read_source(store, cfg)
            s.add(table=fc.source_table, version=bronze_version)
        mlflow.set_tag(f"table_version.bronze.{fc.source_table}", str(bronze_version))
        mlflow.log_params({"image.key": conf.key, "image.shape": "x".join(map(str, shape)),
                           "image.resample": conf.resample, "image.normalize": conf.normalize,
                           **{f"split.{k}": v for k, v in conf.split.model_dump().items()}})
        with stage("features.prepare") as s:
            classes = class_names(images, label_conf(conf))
            if not classes:
                raise ValueError(f"bronze table {fc.source_table!r} has no labelled images")
            prepared, counts = prepare_images(images, conf, classes)
            s.add(**counts, classes=len(classes))
        with stage("features.fit") as s:
            model = image_pipeline(conf).fit(prepared.filter(F.col("split") == "train"))  # stateless: no pass
            s.add(stages=len(model.stages), shape="x".join(map(str, shape)))
        decoded = (model.transform(with_original_size(prepared, conf.content_column))
                   .select(conf.key, LABEL_NAME, LABEL, "split", SIZE, WIDTH, HEIGHT, F.col(PIXELS).alias(FEATURES))
                   .persist(StorageLevel.MEMORY_AND_DISK))
        try:
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
            table = good.select(conf.key, LABEL_NAME, LABEL, "split", FEATURES, SIZE)
            result = write_features(cfg, store, run_id, table, model, classes, shape, counts, bronze_version)
            if fc.stats.enabled:
                log_image_stats(good, conf, classes, shape)
        finally:
            decoded.unpersist()
    return result


# ---- descriptive statistics ---------------------------------------------------------------------------------
def _metric_name(name: str) -> str:
    """A class name as an MLflow metric name part (letters, digits, _ - . / and spaces only)."""
    return re.sub(r"[^\w\-. /]", "_", name)


def _dist(lo: Any, mean: Any, hi: Any) -> dict[str, float | None]:
    return {"min": None if lo is None else float(lo), "mean": None if mean is None else float(mean),
            "max": None if hi is None else float(hi)}


def describe_images(good: DataFrame, conf: ImageFlowConf, classes: list[str], shape: list[int]
                    ) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, list[tuple[str, np.ndarray]]]]:
    """Per-class counts (by split), file-size and original width/height distributions, mean pixel intensity;
    plus the mean image of each class and `conf.grid_per_class` sample images per class (smallest keys).

    `good` holds key, label, split, size, width, height and FEATURES of the decoded rows. Four Spark jobs.
    """
    per_class = (good.withColumn("_vec", array_to_vector(F.col(FEATURES)))
                 .groupBy(LABEL)
                 .agg(F.count("*").alias("rows"), F.min(SIZE).alias("size_min"), F.avg(SIZE).alias("size_mean"),
                      F.max(SIZE).alias("size_max"),
                      F.percentile_approx(SIZE, [0.5, 0.9], 1000).alias("size_pct"),
                      F.min(WIDTH).alias("w_min"), F.avg(WIDTH).alias("w_mean"), F.max(WIDTH).alias("w_max"),
                      F.min(HEIGHT).alias("h_min"), F.avg(HEIGHT).alias("h_mean"), F.max(HEIGHT).alias("h_max"),
                      Summarizer.mean(F.col("_vec")).alias("mean_image"))
                 .collect())
    by_split = good.groupBy(LABEL, "split").count().collect()
    sizes_w = Window.partitionBy(LABEL).orderBy(F.desc("count"), WIDTH, HEIGHT)
    sizes = (good.groupBy(LABEL, WIDTH, HEIGHT).count().withColumn("_r", F.row_number().over(sizes_w))
             .filter(F.col("_r") <= MAX_SIZES_PER_CLASS).collect())
    grid_w = Window.partitionBy(LABEL).orderBy(conf.key)
    grid = (good.withColumn("_r", F.row_number().over(grid_w)).filter(F.col("_r") <= conf.grid_per_class)
            .select(LABEL, conf.key, FEATURES, "_r").collect())

    report: dict[str, Any] = {"classes": classes, "input_shape": shape, "normalized": conf.normalize,
                              "rows": 0, "per_class": {}}
    means: dict[str, np.ndarray] = {}
    for r in sorted(per_class, key=lambda r: r[LABEL]):
        name = classes[r[LABEL]]
        mean_image = np.asarray(r["mean_image"].toArray(), dtype=np.float64)
        means[name] = mean_image.reshape(shape)
        p50, p90 = (r["size_pct"] or [None, None])[:2]
        report["per_class"][name] = {
            "rows": int(r["rows"]), "splits": {s: 0 for s in SPLITS},
            "file_bytes": {**_dist(r["size_min"], r["size_mean"], r["size_max"]), "p50": p50, "p90": p90},
            "width": _dist(r["w_min"], r["w_mean"], r["w_max"]),
            "height": _dist(r["h_min"], r["h_mean"], r["h_max"]),
            "original_sizes": {},
            "mean_intensity": float(mean_image.mean()),
        }
        report["rows"] += int(r["rows"])
    for r in by_split:
        report["per_class"][classes[r[LABEL]]]["splits"][r["split"]] = int(r["count"])
    for r in sorted(sizes, key=lambda r: (r[LABEL], r["_r"])):
        key = f"{r[WIDTH]}x{r[HEIGHT]}" if r[WIDTH] is not None else "unknown"
        report["per_class"][classes[r[LABEL]]]["original_sizes"][key] = int(r["count"])
    samples: dict[str, list[tuple[str, np.ndarray]]] = {}
    for r in sorted(grid, key=lambda r: (r[LABEL], r["_r"])):
        pixels = np.asarray(r[FEATURES], dtype=np.float32).reshape(shape)
        samples.setdefault(classes[r[LABEL]], []).append((r[conf.key], pixels))
    report["sample_grid"] = {c: [k for k, _ in v] for c, v in samples.items()}

    pc = report["per_class"].values()
    n = max(report["rows"], 1)
    counts = [d["rows"] for d in pc]
    report["overall"] = {
        "file_bytes": _dist(min((d["file_bytes"]["min"] for d in pc), default=None),
                            sum(d["file_bytes"]["mean"] * d["rows"] for d in pc) / n,
                            max((d["file_bytes"]["max"] for d in pc), default=None)),
        "mean_intensity": sum(d["mean_intensity"] * d["rows"] for d in pc) / n,
        "class_imbalance": max(counts) / min(counts) if counts else None,  # largest / smallest class
        "classes_without_rows": [c for c in classes if c not in report["per_class"]],
    }
    return report, means, samples


def log_image_stats(good: DataFrame, conf: ImageFlowConf, classes: list[str], shape: list[int]) -> dict[str, Any]:
    """Describe the decoded images and log image_stats.json, key metrics and plots/*.png to the active run."""
    with stage("features.stats") as s:
        report, means, samples = describe_images(good, conf, classes, shape)
        mlflow.log_dict(report, "image_stats.json")
        overall = report["overall"]
        metrics = {"stats.file_bytes.mean": overall["file_bytes"]["mean"],
                   "stats.mean_intensity": overall["mean_intensity"]}
        if overall["class_imbalance"] is not None:
            metrics["stats.class_imbalance"] = overall["class_imbalance"]
        for name, d in report["per_class"].items():
            metrics[f"stats.class.{_metric_name(name)}.mean_intensity"] = d["mean_intensity"]
            metrics[f"stats.class.{_metric_name(name)}.file_bytes.mean"] = d["file_bytes"]["mean"]
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            files = plot_images(report, means, samples, Path(tmp))
            mlflow.log_artifacts(tmp, "plots")
        s.add(classes=len(report["per_class"]), plots=len(files))
    return report


# ---- plots --------------------------------------------------------------------------------------------------
def _mosaic(tiles: list[list[np.ndarray]], shape: list[int], pad: int, fill: float) -> np.ndarray:
    """Rows of (h, w, c) tiles on one canvas with `pad` pixels between them; missing tiles stay `fill`."""
    h, w, c = shape
    cols = max((len(r) for r in tiles), default=1)
    canvas = np.full((len(tiles) * (h + pad) + pad, cols * (w + pad) + pad, c), fill, dtype=np.float32)
    for i, row in enumerate(tiles):
        for j, tile in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y:y + h, x:x + w] = tile
    return canvas[..., 0] if c == 1 else canvas


def plot_images(report: dict[str, Any], means: dict[str, np.ndarray],
                samples: dict[str, list[tuple[str, np.ndarray]]], out_dir: Path) -> list[Path]:
    """sample_grid.png (one row per class), class_counts.png and mean_image_per_class.png (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    h, w, c = report["input_shape"]
    vmax = 1.0 if report["normalized"] else 255.0
    names = [n for n in report["classes"] if n in report["per_class"]][:MAX_PLOT_CLASSES]
    more = len(report["per_class"]) - len(names)
    suffix = f" (first {len(names)} of {len(names) + more} classes)" if more > 0 else ""
    files: list[Path] = []

    # Sample grid: one canvas (one imshow), a labelled row per class.
    pad = max(1, min(h, w) // 8)
    tiles = [[np.clip(p / vmax, 0, 1) for _, p in samples.get(n, [])] for n in names]
    canvas = _mosaic(tiles, [h, w, c], pad, 1.0)
    cols = max((len(t) for t in tiles), default=1)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.5 + cols * w / max(h, w)), max(2.5, 0.8 + len(names) * h / max(h, w))))
    ax.imshow(canvas, cmap="gray" if c == 1 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks([pad + i * (h + pad) + h / 2 for i in range(len(names))],
                  [f"{n} ({report['per_class'][n]['rows']:,})" for n in names], fontsize=8)
    ax.set_xticks([])
    ax.set_title(f"Sample images per class, as decoded {h}x{w}x{c}{suffix}", fontsize=10)
    fig.tight_layout()
    files.append(out_dir / "sample_grid.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)

    # Counts per class and split (stacked), and file-size range per class.
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8.0, 0.5 * len(names) * 2 + 4), 4))
    bottom = np.zeros(len(names))
    for split, colour in zip(SPLITS, ("#4c72b0", "#dd8452", "#55a868"), strict=True):
        vals = np.array([report["per_class"][n]["splits"].get(split, 0) for n in names], dtype=float)
        ax1.bar(names, vals, bottom=bottom, color=colour, label=split)
        bottom += vals
    ax1.bar_label(ax1.containers[-1], [f"{int(v):,}" for v in bottom], fontsize=7)
    ax1.set_title(f"Images per class and split{suffix}", fontsize=10)
    ax1.legend(fontsize=8)
    fb = [report["per_class"][n]["file_bytes"] for n in names]
    mean = np.array([d["mean"] for d in fb])
    err = np.array([[d["mean"] - d["min"] for d in fb], [d["max"] - d["mean"] for d in fb]])
    ax2.bar(names, mean, yerr=err, color="#8172b3", capsize=3)
    ax2.set_title("File size per class, bytes (mean, min-max)", fontsize=10)
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelsize=8, rotation=60 if len(names) > 12 else 0)
    fig.tight_layout()
    files.append(out_dir / "class_counts.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)

    # Mean image per class, on one intensity scale so classes compare.
    ncol = min(10, max(1, len(names)))
    nrow = math.ceil(len(names) / ncol) or 1
    fig, axes = plt.subplots(nrow, ncol, figsize=(1.6 * ncol, 1.8 * nrow), squeeze=False)
    for ax, n in zip(axes.flat, names, strict=False):
        img = np.clip(means[n] / vmax, 0, 1)
        ax.imshow(img[..., 0] if c == 1 else img, cmap="gray" if c == 1 else None, vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_title(f"{n}\nmean {report['per_class'][n]['mean_intensity']:.3f}", fontsize=8)
        ax.axis("off")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(f"Mean image per class{suffix}", fontsize=10)
    fig.tight_layout()
    files.append(out_dir / "mean_image_per_class.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)
    return files
