"""Descriptive statistics of the training split, as a JSON-able report and PNG plots.

Computed by Spark over all training rows: Summarizer metrics of the imputed numeric features, null fractions,
skewness and kurtosis of the raw values, Pearson (pyspark.ml.stat.Correlation) and Spearman correlation matrices,
label included (Spearman on a fixed-seed sample of at most stats.spearman_max_rows rows, ranked on the driver),
ChiSquareTest of the categorical features against the label, label balance and exact histograms.
The plots are drawn from the report, so they need no second pass over the data.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pyspark import StorageLevel
from pyspark.ml.feature import VectorAssembler
from pyspark.ml.stat import ChiSquareTest, Correlation, Summarizer
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.flows.base import LABEL
from pipelines.flows.figures import save_figure
from pipelines.flows.tabular.config import BucketizedGroup, CategoricalGroup, NumericGroup
from pipelines.flows.tabular.nodes import BKT, IDX, IMP

METRICS = ("mean", "variance", "min", "max", "count", "numNonZeros")


def _num(x: Any) -> float | None:
    """JSON-safe float: NaN and infinities become None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def numeric_columns(fc: Any) -> list[str]:
    """Raw numeric inputs described by the report (numeric groups), in config order."""
    return list(dict.fromkeys(c for g in fc.groups if isinstance(g, NumericGroup) for c in g.columns))


def categorical_columns(fc: Any) -> dict[str, str]:
    """Categorical input -> the pipeline column holding its category index (indexer or bucket index)."""
    out = {c: c + IDX for g in fc.groups if isinstance(g, CategoricalGroup) for c in g.columns}
    out.update({f"{c}_bucket": c + BKT for g in fc.groups if isinstance(g, BucketizedGroup)
                for c in g.columns})
    return out


def describe(transformed: DataFrame, fc: Any, sc: Any, regression: bool = False) -> dict[str, Any]:
    """The report for `transformed` = the fitted PipelineModel applied to the training split (all its rows);
    `fc` is the tabular flow section, `sc` the statistics settings. A regression label has no balance and no
    chi-square tests."""
    label = LABEL
    numeric = numeric_columns(fc)
    cats = {k: v for k, v in categorical_columns(fc).items() if v in transformed.columns}
    raw_cats = [c for g in fc.groups if isinstance(g, CategoricalGroup) for c in g.columns]
    imputed = [c + IMP for c in numeric]
    needed = list(dict.fromkeys([label, *numeric, *imputed, *raw_cats, *cats.values()]))
    data = transformed.select(*needed).persist(StorageLevel.MEMORY_AND_DISK)  # several passes below
    try:
        return _describe(data, sc, numeric, imputed, raw_cats, cats, regression)
    finally:
        data.unpersist()


def _describe(transformed: DataFrame, sc: Any, numeric: list[str], imputed: list[str],
              raw_cats: list[str], cats: dict[str, str], regression: bool) -> dict[str, Any]:
    label = LABEL
    report: dict[str, Any] = {"label": label, "rows": 0, "numeric": {}}

    # Null fractions, skewness, kurtosis of the raw values; label balance: one aggregation.
    aggs = [F.count("*").alias("_rows"), F.count(label).alias("_labeled"), F.sum(label).alias("_pos")]
    for i, c in enumerate(numeric):
        aggs += [F.count(c).alias(f"n{i}"), F.skewness(c).alias(f"s{i}"), F.kurtosis(c).alias(f"k{i}")]
    aggs += [F.count(c).alias(f"c{i}") for i, c in enumerate(raw_cats)]
    row = transformed.agg(*aggs).first()
    rows, labeled, pos = row["_rows"], row["_labeled"], int(row["_pos"] or 0)
    report["rows"] = rows
    if not regression:
        report["label_balance"] = {"0": labeled - pos, "1": pos, "null": rows - labeled,
                                   "positive_rate": pos / labeled if labeled else None}
    report["null_fraction"] = {c: 1 - row[f"n{i}"] / rows if rows else None for i, c in enumerate(numeric)}
    report["null_fraction"].update({c: 1 - row[f"c{i}"] / rows if rows else None for i, c in enumerate(raw_cats)})

    # Summarizer over the imputed values (what the model sees before scaling).
    vec = VectorAssembler(inputCols=imputed, outputCol="_num", handleInvalid="keep").transform(transformed)
    summary = vec.select(Summarizer.metrics(*METRICS).summary(F.col("_num")).alias("s")).first()["s"]
    for i, c in enumerate(numeric):
        report["numeric"][c] = {
            "mean": _num(summary["mean"][i]), "variance": _num(summary["variance"][i]),
            "min": _num(summary["min"][i]), "max": _num(summary["max"][i]), "count": int(summary["count"]),
            "numNonZeros": _num(summary["numNonZeros"][i]), "null_fraction": report["null_fraction"][c],
            "skewness": _num(row[f"s{i}"]), "kurtosis": _num(row[f"k{i}"]),
        }

    # Correlations (imputed numerics + label) and chi-square tests need labeled rows.
    lab = transformed.filter(F.col(label).isNotNull()).withColumn("_label", F.col(label).cast("double"))
    corr_in = VectorAssembler(inputCols=[*imputed, "_label"], outputCol="_corr").transform(lab).select("_corr")
    names = [*numeric, label]
    report["correlation"] = {"columns": names}
    m = Correlation.corr(corr_in, "_corr", "pearson").first()[0].toArray()
    report["correlation"]["pearson"] = [[_num(v) for v in r] for r in m]
    if sc.spearman:
        fraction = min(1.0, sc.spearman_max_rows / max(labeled, 1))
        rows = lab.select(*imputed, "_label")
        report["correlation"]["spearman"] = spearman(rows.sample(fraction=fraction, seed=sc.seed)
                                                     if fraction < 1 else rows)
        report["correlation"]["spearman_fraction"] = fraction
    if cats and not regression:
        cat_in = VectorAssembler(inputCols=list(cats.values()), outputCol="_cats").transform(lab)
        chi = ChiSquareTest.test(cat_in, "_cats", "_label", flatten=True).collect()
        report["chi_square"] = {
            list(cats)[r["featureIndex"]]: {"statistic": _num(r["statistic"]), "p_value": _num(r["pValue"]),
                                            "degrees_of_freedom": int(r["degreesOfFreedom"])}
            for r in chi
        }
    report["histograms"] = histograms(transformed, numeric, report["numeric"], sc.histogram_bins)
    return report


def spearman(rows: DataFrame) -> list[list[float | None]]:
    """Spearman's rank correlation of all columns of `rows` (a fixed-seed sample of at most
    stats.spearman_max_rows rows), on the driver: average ranks for ties, then Pearson, as
    Correlation.corr(method="spearman") computes it, without its global sort of every column (four Spark jobs,
    ~4 s of the features job on the flights data, for rows that fit in the driver's memory anyway)."""
    m = rows.toPandas().astype("float64").rank(method="average").corr(method="pearson").to_numpy()
    return [[_num(v) for v in r] for r in m]


def histograms(df: DataFrame, columns: list[str], ranges: dict[str, dict[str, Any]], bins: int
               ) -> dict[str, dict[str, list[float]]]:
    """Exact equal-width histograms of the non-null raw values of every column, in one Spark job."""
    cols = [c for c in columns if ranges[c]["min"] is not None and ranges[c]["max"] is not None]
    if not cols:
        return {}
    parts = []
    for i, c in enumerate(cols):
        lo, hi = ranges[c]["min"], ranges[c]["max"]
        width = (hi - lo) / bins if hi > lo else 1.0
        b = F.least(F.floor((F.col(c) - F.lit(lo)) / F.lit(width)), F.lit(bins - 1)).cast("int")
        parts.append(F.when(F.col(c).isNotNull(), F.struct(F.lit(i).alias("c"), b.alias("b"))))
    counts = (df.select(F.explode(F.array(*parts)).alias("x")).filter(F.col("x").isNotNull())
              .groupBy("x.c", "x.b").count().collect())
    out: dict[str, dict[str, list[float]]] = {}
    for c in cols:
        lo, hi = ranges[c]["min"], ranges[c]["max"]
        width = (hi - lo) / bins if hi > lo else 1.0
        out[c] = {"edges": [lo + k * width for k in range(bins + 1)], "counts": [0] * bins}
    for r in counts:
        c = cols[r["c"]]
        if 0 <= r["b"] < bins:
            out[c]["counts"][r["b"]] = r["count"]
    return out


def plot(report: dict[str, Any], splits: dict[str, dict[str, Any]], out_dir: Path, max_columns: int = 12
         ) -> list[Path]:
    """histograms.png, correlation.png and label_balance.png drawn from the report (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    files = []

    hists = list(report.get("histograms", {}).items())[:max_columns]
    if hists:
        ncol = 4
        nrow = math.ceil(len(hists) / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 3 * nrow), squeeze=False)
        for ax, (name, h) in zip(axes.flat, hists, strict=False):
            edges = h["edges"]
            ax.bar(edges[:-1], h["counts"], width=[b - a for a, b in zip(edges[:-1], edges[1:], strict=True)],
                   align="edge", color="#4c72b0", edgecolor="white", linewidth=0.3)
            nulls = report["numeric"][name]["null_fraction"]
            ax.set_title(f"{name} (null {nulls:.1%})" if nulls is not None else name, fontsize=10)
            ax.tick_params(labelsize=8)
        title = f"Training split: raw numeric features ({report['rows']:,} rows)"
        files.append(save_figure(fig, out_dir / "histograms.png", title, list(axes.flat)[len(hists):], fontsize=12))

    corr = report.get("correlation", {})
    methods = [m for m in ("pearson", "spearman") if m in corr]
    if methods:
        names = corr["columns"]
        size = max(5.0, 0.55 * len(names) + 2)
        fig, axes = plt.subplots(1, len(methods), figsize=(size * len(methods), size), squeeze=False)
        for ax, m in zip(axes.flat, methods, strict=True):
            mat = [[v if v is not None else float("nan") for v in r] for r in corr[m]]
            im = ax.imshow(mat, cmap="RdBu_r", vmin=-1, vmax=1)
            ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
            ax.set_yticks(range(len(names)), names, fontsize=8)
            for i, r in enumerate(mat):
                for j, v in enumerate(r):
                    if not math.isnan(v):
                        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                                color="white" if abs(v) > 0.6 else "black")
            frac = corr.get(f"{m}_fraction", 1.0)
            sample = f", {frac:.0%} sample" if frac < 1 else ""
            ax.set_title(f"{m.capitalize()} correlation (training split{sample})", fontsize=11)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        files.append(save_figure(fig, out_dir / "correlation.png"))

    bal = report.get("label_balance")
    if bal:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        keys = ["0", "1", "null"]
        vals = [bal.get(k, 0) for k in keys]
        bars = ax1.bar([f"{report['label']}=0", f"{report['label']}=1", "no label"], vals,
                       color=["#4c72b0", "#dd8452", "#999999"])
        ax1.bar_label(bars, [f"{v:,}" for v in vals], fontsize=9)
        ax1.set_title("Label balance, training split", fontsize=11)
        names = [s for s in splits if splits[s].get("label_rate") is not None]
        rates = [splits[s]["label_rate"] for s in names]
        bars = ax2.bar(names, rates, color="#55a868")
        ax2.bar_label(bars, [f"{r:.1%}" for r in rates], fontsize=9)
        ax2.set_ylim(0, max(rates + [0.1]) * 1.25)
        ax2.set_title("Positive label rate by split", fontsize=11)
        files.append(save_figure(fig, out_dir / "label_balance.png"))
    return files
