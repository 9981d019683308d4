"""The tabular flow's label kinds and splits on small real frames: what a user's own profile can ask for."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

from pyspark.sql import SparkSession

from pipelines.core.config import Config
from pipelines.flows import get_flow
from pipelines.flows.tabular.nodes import assign_split, clean

ROWS = [(1, "Ideal", 300.0, 2013, 1, 5), (2, "Fair", 9000.0, 2013, 6, 30), (3, None, None, 2013, 7, 1),
        (4, " Premium ", 5000.0, 2014, 2, 1), (4, "Premium", 5000.0, 2014, 2, 1)]
SCHEMA = "id int, cut string, price double, year int, month int, day int"


def _flow(make_cfg: Callable[..., Config], *sets: str) -> Config:
    return make_cfg("pipeline=diamonds", *sets)


def test_label_kinds(spark: SparkSession, make_cfg: Callable[..., Config]) -> None:
    df = spark.createDataFrame(ROWS, SCHEMA)
    keyed = ["flow.key=[id]", "flow.groups=[{kind: numeric, columns: [month]}]"]
    cat = clean(df, _flow(make_cfg, *keyed).flow)
    assert sorted((r["id"], r["label"]) for r in cat.collect()) == [(1, 1), (2, 0), (3, None), (4, 1)]
    thr = clean(df, _flow(make_cfg, *keyed, "flow.label={kind: threshold, column: price, threshold: 5000}").flow)
    assert sorted((r["id"], r["label"]) for r in thr.collect()) == [(1, 0), (2, 1), (3, None), (4, 0)]
    cfg = _flow(make_cfg, *keyed, "flow.label={kind: regression, column: price}")
    reg = clean(df, cfg.flow)
    assert dict(reg.dtypes)["label"] == "double"
    assert sorted((r["id"], r["label"]) for r in reg.collect() if r["label"] is not None) == [
        (1, 300.0), (2, 9000.0), (4, 5000.0)]
    assert get_flow(cfg).head(cfg) == "regression"
    assert get_flow(_flow(make_cfg, *keyed)).head(_flow(make_cfg, *keyed)) == "binary"


def test_splits_by_date_range_and_hash(spark: SparkSession, make_cfg: Callable[..., Config]) -> None:
    df = spark.createDataFrame(ROWS, SCHEMA)
    dated = ["flow.key=[id]", "flow.date_columns=[year, month, day]", "flow.date_name=day_date",
             "flow.groups=[{kind: numeric, columns: [month]}]",
             "flow.split={by: date_range, train: [2013-01-01, 2013-06-30], validation: [2013-07-01, 2013-12-31],"
             " test: [2014-01-01, 2014-12-31]}"]
    cfg = _flow(make_cfg, *dated)
    rows = assign_split(clean(df, cfg.flow), cfg.flow).collect()
    assert {r["id"]: (r["day_date"], r["split"]) for r in rows} == {
        1: (date(2013, 1, 5), "train"), 2: (date(2013, 6, 30), "train"), 3: (date(2013, 7, 1), "validation"),
        4: (date(2014, 2, 1), "test")}
    many = spark.range(2000).selectExpr("cast(id as int) id", "'Ideal' cut", "1.0 price")
    cfg = _flow(make_cfg, "flow.key=[id]", "flow.groups=[{kind: numeric, columns: [price]}]")
    first = {r["id"]: r["split"] for r in assign_split(clean(many, cfg.flow), cfg.flow).collect()}
    again = {r["id"]: r["split"] for r in assign_split(clean(many.orderBy("price", "id"), cfg.flow),
                                                         cfg.flow).collect()}
    assert first == again  # a row keeps its split
    share = {s: sum(v == s for v in first.values()) / 2000 for s in ("train", "validation", "test")}
    assert abs(share["test"] - 0.15) < 0.04 and abs(share["validation"] - 0.15) < 0.04
    assert "day_date" not in assign_split(clean(many, cfg.flow), cfg.flow).columns  # no dates: no date column
