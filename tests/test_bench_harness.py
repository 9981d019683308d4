"""The benchmark harness: interleaved rounds after a warm-up, medians and ratios from the timed runs only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.benchmarks import harness

pytestmark = pytest.mark.fast  # the fast tier: no JVM, cluster or training process


def test_sides_interleave_and_warmups_are_not_counted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    order: list[str] = []
    # A takes 1, 2, 3, 4 s (the first is its warm-up), B 10, 20, 40, 80 s: the clock is read before and after each run.
    durations = iter([1.0, 10.0, 2.0, 20.0, 3.0, 40.0, 4.0, 80.0])
    reads: list[float] = []

    def clock() -> float:
        """A clock read at the start (0) and the end (the duration) of each run."""
        reads.append(0.0 if len(reads) % 2 == 0 else next(durations))
        return reads[-1]

    monkeypatch.setattr(harness, "_clock", clock)
    runs = harness.measure({"A": lambda: order.append("A") or {"rows": 100},
                            "B": lambda: order.append("B") or {"rows": 100}}, runs=3)
    assert order == ["A", "B"] * 4
    assert [(r.side, r.round) for r in runs] == [("A", 0), ("B", 0), ("A", 1), ("B", 1), ("A", 2), ("B", 2),
                                                 ("A", 3), ("B", 3)]
    report = harness.Report("demo", runs)
    assert report.seconds("A") == harness.Stats(3, 2, 4)  # the warm-up's 1 s is not among them
    assert report.seconds("B") == harness.Stats(40, 20, 80)
    assert report.rate("A", "rows").median == pytest.approx(100 / 3)
    assert report.ratio("A", "B", "rows") == pytest.approx((100 / 3) / (100 / 40))
    assert report.ratio("B", "A") == pytest.approx(40 / 3)
    txt = report.write([("A", "B", "rows")], tmp_path)
    data = json.loads((tmp_path / "demo.json").read_text())
    assert len(data["runs"]) == 8 and data["ratios"]["A/B"] == pytest.approx(40 / 3)
    assert data["meta"]["commit"] and "ratio A / B (rows/s): 13.333x" in txt.read_text()


def test_fewer_than_three_runs_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        harness.measure({"A": lambda: None}, runs=2)


def test_gauges_are_reported_as_values_not_per_second(tmp_path: Path) -> None:
    """A peak (max_*) or a rate the side measured itself (*_per_s) is not divided by the run's seconds."""
    peaks = iter([999.0, 10.0, 30.0, 20.0, 999.0, 40.0, 40.0, 44.0])  # warm-ups 999 (A) and 999 (B)
    runs = harness.measure({"A": lambda: {"max_mb": next(peaks)}, "B": lambda: {"max_mb": next(peaks)}},
                           runs=3, warmup=1)
    report = harness.Report("gauges", runs)
    assert [r.counters["max_mb"] for r in report.timed("A")] == [30.0, 999.0, 40.0]
    report = harness.Report("gauges", [harness.Run("A", i, 5.0, 0, 0, {"max_mb": v, "samples_per_s": 2 * v})
                                       for i, v in enumerate([1.0, 10.0, 30.0, 20.0])]
                            + [harness.Run("B", i, 7.0, 0, 0, {"max_mb": v, "samples_per_s": v})
                               for i, v in enumerate([1.0, 40.0, 40.0, 44.0])])
    assert report.value("A", "max_mb") == harness.Stats(20.0, 10.0, 30.0)
    assert report.ratio("B", "A", "max_mb") == pytest.approx(40 / 20)
    assert report.ratio("A", "B", "samples_per_s") == pytest.approx(40 / 40)
    text = report.write([("B", "A", "max_mb")], tmp_path).read_text()
    assert "max_mb median 20.0 (min 10.0, max 30.0)" in text and "ratio B / A (max_mb): 2.000x" in text
