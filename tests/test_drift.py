"""Drift statistics on small known distributions: exact PSI on hand-made histograms, KS on shifted data."""

from __future__ import annotations

import math

import pytest
from pyspark.sql import SparkSession

from pipelines.stages.monitor.drift import categorical_drift, drift_report, numeric_drift, psi_from_counts


@pytest.mark.fast
def test_psi_exact() -> None:
    assert psi_from_counts([50, 50], [50, 50]) == 0.0
    expected = (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)
    assert psi_from_counts([5, 5], [8, 2]) == pytest.approx(expected)
    assert psi_from_counts([10, 0], [5, 5]) > 1.0  # an empty reference bin is floored, not infinite


def test_numeric_drift_detects_shift(spark: SparkSession) -> None:
    ref = spark.range(0, 2000).selectExpr("cast(id % 100 as double) as x")
    same = spark.range(0, 1000).selectExpr("cast((id * 7) % 100 as double) as x")
    shifted = spark.range(0, 1000).selectExpr("cast(id % 100 + 50 as double) as x")
    d_same = numeric_drift(ref, same, "x")
    d_shift = numeric_drift(ref, shifted, "x")
    assert d_same.psi < 0.01 and d_same.ks < 0.03
    assert d_shift.psi > 1.0
    assert d_shift.ks == pytest.approx(0.5, abs=0.03)  # half the mass moved past the reference's range
    assert (d_shift.ref_mean, d_shift.cur_mean) == (pytest.approx(49.5), pytest.approx(99.5))


def test_numeric_drift_counts_nulls(spark: SparkSession) -> None:
    ref = spark.range(0, 1000).selectExpr("cast(id % 10 as double) as x")
    cur = spark.range(0, 1000).selectExpr("if(id % 2 = 0, null, cast(id % 10 as double)) as x")
    assert numeric_drift(ref, cur, "x").psi > 1.0  # half the batch missing is drift


def test_categorical_drift(spark: SparkSession) -> None:
    ref = spark.createDataFrame([("a",)] * 50 + [("b",)] * 50, "c string")
    same = spark.createDataFrame([("a",)] * 25 + [("b",)] * 25, "c string")
    new = spark.createDataFrame([("a",)] * 25 + [("z",)] * 25, "c string")
    assert categorical_drift(ref, same, "c").psi == pytest.approx(0.0)
    d = categorical_drift(ref, new, "c")
    assert d.psi > 1.0 and (d.ref_count, d.cur_count) == (100, 50)


def test_many_distinct_values_do_not_overflow(spark: SparkSession) -> None:
    """A KS grid over ~400 distinct edges (probabilities) stays one flat expression."""
    ref = spark.range(0, 5000).selectExpr("rand(1) as p")
    cur = spark.range(0, 5000).selectExpr("rand(2) * 0.5 as p")
    d = numeric_drift(ref, cur, "p", bins=10, ks_points=400)
    assert d.ks == pytest.approx(0.5, abs=0.05) and d.psi > 0.5


def test_report_of_many_columns_matches_hand_computed_psi(spark: SparkSession) -> None:
    """All columns in one report (one pass per statistic): each column's PSI equals the one computed here by hand
    from the known deciles, so columns cannot borrow each other's bins or counts."""
    ref = spark.range(0, 2000).selectExpr("cast(id % 100 as double) as x", "cast(id % 10 as double) as y",
                                          "if(id % 4 = 0, 'a', 'b') as c")
    cur = spark.range(0, 1000).selectExpr("cast(id % 50 as double) as x", "if(id % 2 = 0, null, 5.0) as y",
                                          "if(id % 4 = 0, 'b', 'a') as c")
    x, y, c = drift_report(ref, cur, ["x", "y"], ["c"])
    # x: reference deciles 9, 19, ..., 89 -> ten bins of 10%; the batch fills the first five with 20% each
    assert x.psi == pytest.approx(psi_from_counts([0.1] * 10 + [0.0], [0.2] * 5 + [0.0] * 5 + [0.0]))
    assert (x.ref_count, x.cur_count, x.ref_mean, x.cur_mean) == (2000, 1000, pytest.approx(49.5),
                                                                  pytest.approx(24.5))
    # y: deciles 0..8 -> bins {0}, ..., {8}, {9}; the batch: half null, half 5.0 (bin 5)
    assert y.psi == pytest.approx(psi_from_counts([0.1] * 10 + [0.0], [0.0] * 5 + [0.5] + [0.0] * 4 + [0.5]))
    assert c.psi == pytest.approx(psi_from_counts([500, 1500, 0, 0], [750, 250, 0, 0]))
    assert [d.feature for d in (x, y, c)] == ["x", "y", "c"] and c.kind == "categorical"
