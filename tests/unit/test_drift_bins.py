"""Drift binning without Spark: PSI of histograms, the KS distance over shared bins, the null bin and bin edges
taken from quantiles."""

from __future__ import annotations

import math

import pytest

from pipelines.stages.monitor.drift import EPS, _at, _hist, _ks, psi_from_counts

pytestmark = pytest.mark.fast


def test_psi_is_symmetric_zero_on_equal_shapes_and_floored_on_empty_bins() -> None:
    assert psi_from_counts([1, 2, 3], [10, 20, 30]) == pytest.approx(0.0)  # counts or fractions alike
    assert psi_from_counts([3, 1], [1, 3]) == pytest.approx(psi_from_counts([1, 3], [3, 1]))
    assert psi_from_counts([3, 1], [1, 3]) == pytest.approx(math.log(3))  # 2 * (0.75 - 0.25) * ln 3
    assert psi_from_counts([1, 0], [0, 1]) == pytest.approx(2 * (1 - EPS) * math.log(1 / EPS))
    assert psi_from_counts([0, 0], [0, 0]) == 0.0
    with pytest.raises(ValueError):
        psi_from_counts([1, 2], [1, 2, 3])


def test_ks_is_the_largest_gap_between_the_cdfs() -> None:
    assert _ks([1, 1, 1, 1], [1, 1, 1, 1]) == 0.0
    assert _ks([1, 1, 0, 0], [0, 0, 1, 1]) == pytest.approx(1.0)
    assert _ks([2, 1, 1], [1, 1, 2]) == pytest.approx(0.25)
    assert _ks([0, 0], [0, 0]) == 0.0


def test_histogram_bins_in_order_with_the_null_bin_last() -> None:
    counts = {"0": 5, "2": 1, "-1": 3, "7": 9}  # bin 7 is past n: not a bin of this histogram
    assert _hist(counts, 3) == [5.0, 0.0, 1.0]
    assert _hist(counts, 3, nulls=True) == [5.0, 0.0, 1.0, 3.0]


def test_bin_edges_are_the_distinct_quantiles_sorted() -> None:
    quantiles = {0.25: 3.0, 0.5: 1.0, 0.75: 3.0, 0.9: math.nan}
    assert _at(quantiles, [0.25, 0.5, 0.75, 0.9, 0.99]) == [1.0, 3.0]
    assert _at({}, [0.5]) == []
