"""Image flow statistics: per-class counts by split, file sizes, original sizes, mean intensity, and PNG plots
(sample grid, class counts, mean image per class). Only aggregates and a few images per class reach the driver."""

from __future__ import annotations

import math
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from pyspark.ml.functions import array_to_vector
from pyspark.ml.stat import Summarizer
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from pipelines.core.logs import stage
from pipelines.flows.base import FEATURES, LABEL, SPLITS
from pipelines.flows.figures import save_figure
from pipelines.flows.image.config import ImageFlowConf
from pipelines.flows.image.nodes import HEIGHT, SIZE, WIDTH

MAX_PLOT_CLASSES = 50  # plots show at most this many classes (the JSON report has all)
MAX_SIZES_PER_CLASS = 10  # most common original (width, height) pairs reported per class


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


def log_image_stats(good: DataFrame, conf: ImageFlowConf, classes: list[str], shape: list[int], recorder: Any
                    ) -> dict[str, Any]:
    """Describe the decoded images and log image_stats.json, key metrics and plots/*.png to the active run."""
    with stage("features.stats") as s:
        report, means, samples = describe_images(good, conf, classes, shape)
        recorder.report(report, "image_stats.json")
        overall = report["overall"]
        metrics = {"stats.file_bytes.mean": overall["file_bytes"]["mean"],
                   "stats.mean_intensity": overall["mean_intensity"]}
        if overall["class_imbalance"] is not None:
            metrics["stats.class_imbalance"] = overall["class_imbalance"]
        for name, d in report["per_class"].items():
            metrics[f"stats.class.{_metric_name(name)}.mean_intensity"] = d["mean_intensity"]
            metrics[f"stats.class.{_metric_name(name)}.file_bytes.mean"] = d["file_bytes"]["mean"]
        recorder.metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            files = plot_images(report, means, samples, Path(tmp))
            recorder.artifacts(tmp, "plots")
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
    files.append(save_figure(fig, out_dir / "sample_grid.png"))

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
    files.append(save_figure(fig, out_dir / "class_counts.png"))

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
    files.append(save_figure(fig, out_dir / "mean_image_per_class.png", f"Mean image per class{suffix}",
                             list(axes.flat)[len(names):]))
    return files
