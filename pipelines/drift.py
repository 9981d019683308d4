"""Drift statistics between a reference (training) sample and a current (scored) batch, computed in Spark.

- PSI (population stability index) per feature over reference-quantile bins (numeric) or categories
  (categorical): sum((cur - ref) * ln(cur / ref)) with a small floor so empty bins stay finite.
  Rule of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major shift.
- KS distance per numeric feature: the largest gap between the two empirical CDFs, evaluated on a fine grid of
  reference-and-current quantiles (exact for the grid points, so a lower bound of the true statistic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

EPS = 1e-4


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    kind: str  # numeric | categorical
    psi: float
    ks: float | None
    ref_count: int
    cur_count: int
    ref_mean: float | None
    cur_mean: float | None


def psi_from_counts(ref: list[float], cur: list[float]) -> float:
    """PSI of two histograms over the same bins (counts or fractions)."""
    rt, ct = sum(ref) or 1.0, sum(cur) or 1.0
    total = 0.0
    for r, c in zip(ref, cur, strict=True):
        p, q = max(r / rt, EPS), max(c / ct, EPS)
        total += (q - p) * math.log(q / p)
    return total


def _edges(ref: DataFrame, col: str, bins: int) -> list[float]:
    qs = ref.approxQuantile(col, [i / bins for i in range(1, bins)], 0.001)
    return sorted(set(qs))


def _bucket_counts(df: DataFrame, col: str, edges: list[float]) -> tuple[list[float], int]:
    """Counts per bin (-inf, e1], (e1, e2], ..., (ek, inf) and the number of nulls.

    One flat CASE WHEN with a branch per edge (first match wins): nesting one CASE per edge overflows the JVM
    stack during analysis once there are a few hundred edges (a KS grid over probabilities).
    """
    expr = None
    for i, edge in enumerate(edges):
        cond = F.col(col) <= edge
        expr = F.when(cond, F.lit(i)) if expr is None else expr.when(cond, F.lit(i))
    expr = F.lit(0) if expr is None else expr.otherwise(F.lit(len(edges)))
    rows = df.select(F.when(F.col(col).isNull(), F.lit(-1)).otherwise(expr).alias("b")).groupBy("b").count()
    got = {r["b"]: r["count"] for r in rows.collect()}
    return [float(got.get(i, 0)) for i in range(len(edges) + 1)], got.get(-1, 0)


def numeric_drift(ref: DataFrame, cur: DataFrame, col: str, bins: int = 10, ks_points: int = 200) -> FeatureDrift:
    """PSI over reference deciles (nulls as their own bin) and the KS distance for one numeric column."""
    ref_v = ref.select(F.col(col).cast("double").alias(col))
    cur_v = cur.select(F.col(col).cast("double").alias(col))
    edges = _edges(ref_v.na.drop(), col, bins)
    r_counts, r_null = _bucket_counts(ref_v, col, edges)
    c_counts, c_null = _bucket_counts(cur_v, col, edges)
    psi = psi_from_counts(r_counts + [r_null], c_counts + [c_null])
    grid = sorted(set(_edges(ref_v.na.drop(), col, ks_points) + _edges(cur_v.na.drop(), col, ks_points)))
    ks = 0.0
    if grid:
        rc, _ = _bucket_counts(ref_v.na.drop(), col, grid)
        cc, _ = _bucket_counts(cur_v.na.drop(), col, grid)
        rt, ct = sum(rc) or 1.0, sum(cc) or 1.0
        r_cdf = c_cdf = 0.0
        for a, b in zip(rc, cc, strict=True):
            r_cdf, c_cdf = r_cdf + a / rt, c_cdf + b / ct
            ks = max(ks, abs(r_cdf - c_cdf))
    r_stats = ref_v.agg(F.count(F.lit(1)), F.mean(col)).first()
    c_stats = cur_v.agg(F.count(F.lit(1)), F.mean(col)).first()
    return FeatureDrift(col, "numeric", psi, ks, r_stats[0], c_stats[0], r_stats[1], c_stats[1])


def categorical_drift(ref: DataFrame, cur: DataFrame, col: str, top: int = 50) -> FeatureDrift:
    """PSI over the reference's `top` categories plus 'other' and null."""
    def counts(df: DataFrame) -> dict[str | None, int]:
        return {r[col]: r["count"] for r in df.groupBy(col).count().collect()}

    rc, cc = counts(ref), counts(cur)
    keep = [k for k, _ in sorted(((k, v) for k, v in rc.items() if k is not None), key=lambda kv: -kv[1])[:top]]
    def hist(c: dict[str | None, int]) -> list[float]:
        other = sum(v for k, v in c.items() if k is not None and k not in keep)
        return [float(c.get(k, 0)) for k in keep] + [float(other), float(c.get(None, 0))]

    return FeatureDrift(col, "categorical", psi_from_counts(hist(rc), hist(cc)), None, sum(rc.values()),
                        sum(cc.values()), None, None)


def drift_report(ref: DataFrame, cur: DataFrame, numeric: list[str], categorical: list[str],
                 bins: int = 10) -> list[FeatureDrift]:
    """Drift of every listed column between `ref` and `cur`."""
    return ([numeric_drift(ref, cur, c, bins) for c in numeric]
            + [categorical_drift(ref, cur, c) for c in categorical])
