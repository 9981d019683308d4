"""score and monitor on a real chain (1% of flights, a real two-worker Horovod model in the MLflow registry)."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import monitor as monitor_job
from jobs import score as score_job
from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore
from pipelines.core.errors import MissingModel
from pipelines.flows import get_flow
from pipelines.flows.tabular.nodes import clean, date_column, enrich
from pipelines.stages.inputs import read_sources
from pipelines.stages.monitor.drift import drift_report
from pipelines.stages.monitor.run import is_alert, reference_frame
from pipelines.stages.score.batch import model_udf, predict_batch, resolve_model, run_score
from tests.chain import chain_config

D1, D2, D3 = date(2013, 12, 3), date(2013, 12, 4), date(2013, 12, 10)
STREAM_SETTLE = ["ingest.settle_s=2"]  # short, yet 40 times the test producer's pause between writes (0.05 s)


def _gold(store: DeltaStore, cfg: Config) -> pd.DataFrame:
    return store.read(cfg.catalog.path("predictions")).toPandas()


def _score(spark: SparkSession, cfg: Config, store: DeltaStore, dates: list[date]) -> dict[str, Any]:
    return run_score(spark, cfg, store, get_flow(cfg), dates)


def _bronze(store: DeltaStore, cfg: Config) -> tuple[dict[str, DataFrame], dict[str, int]]:
    return read_sources(store, cfg, get_flow(cfg).sources(cfg))


def _args(cfg: Config, *extra: str) -> list[str]:
    return ["--set", f"storage.workspace={cfg.workspace}", "--set", "demo.fraction=0.01", *extra]


def test_score_replaces_only_its_dates(spark: SparkSession, chain: Config) -> None:
    store = DeltaStore(spark)
    first = _score(spark, chain, store, [D1, D2])
    _score(spark, chain, store, [D3])
    before = _gold(store, chain)
    key = chain.flow.key
    assert first["rows_scored"] > 0 and len(before) == len(before.drop_duplicates(key))
    assert sorted(before["flight_date"].astype(str).unique()) == ["2013-12-03", "2013-12-04", "2013-12-10"]
    assert before["probability"].between(0, 1).all() and set(before["prediction"]) <= {0, 1}
    assert (before["model_version"] == "1").all() and (before["input_table_version"] == 0).all()

    again = _score(spark, chain, store, [D1])  # re-run one date: that partition only
    after = _gold(store, chain)
    assert len(after) == len(before) and len(after) == len(after.drop_duplicates(key))
    cols = [*key, "flight_date", "probability", "prediction"]
    pd.testing.assert_frame_equal(after[cols].sort_values(key).reset_index(drop=True),
                                  before[cols].sort_values(key).reset_index(drop=True))
    d1 = before["flight_date"].astype(str) == "2013-12-03"
    assert (after[after["flight_date"].astype(str) != "2013-12-03"]["scored_at"].sort_values().tolist()
            == before[~d1]["scored_at"].sort_values().tolist())  # other dates untouched
    assert again["gold_version"] == first["gold_version"] + 2


def test_probabilities_equal_model_predict(spark: SparkSession, chain: Config) -> None:
    store = DeltaStore(spark)
    _score(spark, chain, store, [D2])
    model = resolve_model(chain)
    preprocessing = model.preprocessing()
    frames, _ = _bronze(store, chain)
    fc = chain.flow
    facts = frames[chain.features.source_table].filter(date_column(fc) == F.lit(D2))
    enriched = enrich(clean(facts, fc), {j.table: frames[j.table] for j in fc.joins}, fc)
    from pyspark.ml.functions import vector_to_array

    rows = (preprocessing.transform(enriched)
            .select(*fc.key, vector_to_array("features_vector", "float32").alias("features")).toPandas())
    own = mlflow.pyfunc.load_model(model.uri).predict(rows[["features"]])
    rows["own"] = own["probability"].to_numpy()
    gold = _gold(store, chain)
    merged = rows.merge(gold[gold["flight_date"].astype(str) == "2013-12-04"], on=fc.key)
    assert len(merged) == len(rows) > 0
    assert merged["probability"].to_numpy() == pytest.approx(merged["own"].to_numpy(), abs=1e-6)


def test_unknown_alias_or_version_writes_nothing(spark: SparkSession, chain: Config) -> None:
    store = DeltaStore(spark)
    path = chain.catalog.path("predictions")
    version = store.version(path)
    assert score_job.main(_args(chain, "--date", "2013-12-20", "--alias", "nope")) == 3
    assert score_job.main(_args(chain, "--date", "2013-12-20", "--version", "99")) == 3
    assert store.version(path) == version
    with pytest.raises(MissingModel, match=r"has no alias 'nope'"):
        resolve_model(chain, alias="nope")
    assert score_job.main(_args(chain, "--date", "2013-13-01")) == 2  # bad date: bad input


def test_unseen_categories_and_missing_weather(spark: SparkSession, chain: Config) -> None:
    store = DeltaStore(spark)
    fc = chain.flow
    frames, versions = _bronze(store, chain)
    facts = (frames[chain.features.source_table].filter(date_column(fc) == F.lit(D1)).limit(5)
             .withColumn("carrier", F.lit("ZZ")).withColumn("dest", F.lit("NOWHERE")))
    dims = {j.table: frames[j.table] for j in fc.joins}
    dims["weather"] = dims["weather"].limit(0)  # no weather at all for these flights
    model = resolve_model(chain)
    rows = get_flow(chain).scoring_rows(chain, model, {**dims, chain.features.source_table: facts}, [D1])
    out = predict_batch(rows, model, model_udf(spark, chain, model), versions["flights"])
    probs = [r.probability for r in out.collect()]
    assert len(probs) == 5 and all(p is not None and 0 <= p <= 1 for p in probs)


def test_drift_detects_a_shifted_feature(spark: SparkSession, chain: Config) -> None:
    store = DeltaStore(spark)
    fc = chain.flow
    model = resolve_model(chain)
    ref = reference_frame(spark, store, model, 100_000)
    frames, _ = _bronze(store, chain)
    december = enrich(clean(frames["flights"].filter("month = 12"), fc),
                      {j.table: frames[j.table] for j in fc.joins}, fc)
    same = drift_report(ref, december, ["distance"], ["carrier"])
    assert not any(is_alert(d, chain) for d in same), same
    shifted = drift_report(ref, december.withColumn("distance", F.col("distance") * 3), ["distance"], ["carrier"])
    assert is_alert(shifted[0], chain) and shifted[0].psi > 1.0 and not is_alert(shifted[1], chain)


def test_monitor_job_writes_drift_and_exits_on_alert(spark: SparkSession, chain: Config, tmp_path: Path) -> None:
    store = DeltaStore(spark)
    _score(spark, chain, store, [D1, D2, D3])
    window = ["--date", "2013-12-03,2013-12-04,2013-12-10"]
    calm = ["--set", "monitor.psi_threshold=100", "--set", "monitor.ks_threshold=1",
            "--set", "monitor.prediction_psi_threshold=100"]
    assert monitor_job.main(_args(chain, *calm, *window)) == 0
    drift = store.read(chain.catalog.path("drift")).toPandas()
    assert "__prediction__" in set(drift["feature"]) and {"distance", "carrier", "temp"} <= set(drift["feature"])
    assert not drift["alert"].any() and (drift["cur_count"] > 0).all()
    assert monitor_job.main(_args(chain, "--set", "monitor.psi_threshold=0.000001", *window)) == 4
    again = store.read(chain.catalog.path("drift")).toPandas()
    assert len(again) == len(drift) and again["alert"].any()  # the window's rows replaced, not duplicated
    mlflow.set_tracking_uri(chain_config(Path(chain.workspace)).tracking_uri)
    runs = mlflow.search_runs(experiment_names=[chain.mlflow.experiment], filter_string="tags.job = 'monitor'",
                              order_by=["attributes.start_time DESC"])
    assert runs.iloc[0]["metrics.alerts"] > 0 and "metrics.realized.labeled_rows" in runs.columns


def test_streaming_scores_every_row_exactly_once_across_restart(spark: SparkSession, chain: Config,
                                                               tmp_path: Path) -> None:
    """Two files arrive one after the other; a stream is (re)started for each. The second is written slowly by a
    producer process while a stream runs: it is scored once complete, whole. Then Spark replays the last
    micro-batch (its commit removed from the checkpoint, as after a crash between the batch's writes and the
    commit): gold and the quarantine keep one copy of each row."""
    from pipelines.stages.score.stream import run_stream
    from tests.support.producer import slow_producer

    cfg = chain_config(Path(chain.workspace), "scoring.stream_path=incoming/*.csv",
                       "scoring.table=stream_predictions", *STREAM_SETTLE)
    store = DeltaStore(spark)
    month = Path(cfg.catalog.landing) / "flights" / "flights_2013_12.csv"
    header, *lines = month.read_text().splitlines()
    incoming = Path(cfg.catalog.landing) / "incoming"
    incoming.mkdir()
    early = [ln for ln in lines if ",12,1," in ln[:12] or ",12,2," in ln[:12]]
    late = [ln for ln in lines if ",12,3," in ln[:12]]
    assert early and late
    (incoming / "a.csv").write_text("\n".join([header, *early, "2013,12,2,oops"]) + "\n")
    first = run_stream(spark, cfg, store, get_flow(cfg))
    assert sum(b["rows_scored"] for b in first) == len(early) and sum(b["rows_quarantined"] for b in first) == 1
    late_file = "\n".join([header, "2013,12,3,oops", *late]) + "\n"
    with slow_producer(incoming / "b 2013-12 é.csv", late_file.encode(), tmp_path / "producer") as finish:
        during = run_stream(spark, cfg, store, get_flow(cfg))  # a name Spark percent-encodes, still being written
        finish()
    second = run_stream(spark, cfg, store, get_flow(cfg))  # restart from the checkpoint: only the new file
    nothing = run_stream(spark, cfg, store, get_flow(cfg))
    path = cfg.catalog.path("predictions")
    complete = store.read(path).count()
    commits = Path(cfg.workspace) / "checkpoints" / "stream-score" / "commits"
    last = max(int(c.name) for c in commits.iterdir() if c.name.isdigit())
    for c in (commits / str(last), commits / f".{last}.crc"):
        c.unlink(missing_ok=True)
    replayed = run_stream(spark, cfg, store, get_flow(cfg))  # Spark runs the uncommitted batch again
    gold = store.read(path).toPandas()
    quarantined = sorted(r.raw_line for r in store.read(cfg.catalog.path("quarantine_rows")).collect())
    assert (complete, len(gold), len(gold.drop_duplicates(cfg.flow.key)), quarantined) == (
        len(early) + len(late), len(early) + len(late), len(early) + len(late), ["2013,12,2,oops", "2013,12,3,oops"])
    assert sum(b["rows_scored"] for b in during) == 0 and sum(b["rows_scored"] for b in second) == len(late)
    assert nothing == [] and [b["batch_id"] for b in replayed] == [last]


def test_registered_model_serves_on_loopback(spark: SparkSession, chain: Config, tmp_path: Path) -> None:
    import json
    import urllib.request

    from tests.support.servers import model_server

    store = DeltaStore(spark)
    model = resolve_model(chain)
    rows = (store.read(model.meta["feature_table"], int(model.meta["feature_table_version"]))
            .filter("split = 'test'").select("features").limit(3).toPandas())
    expected = mlflow.pyfunc.load_model(model.uri).predict(rows)
    body = json.dumps({"dataframe_split": {"columns": ["features"],
                                           "data": [[list(map(float, v))] for v in rows["features"]]}}).encode()
    with model_server(f"models:/{chain.mlflow.registered_model}@champion", chain.tracking_uri, tmp_path) as url:
        req = urllib.request.Request(f"{url}/invocations", body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - loopback
                answer = json.loads(resp.read())["predictions"]
        except urllib.error.HTTPError as e:
            pytest.fail(f"model server answered {e.code}: {e.read().decode()[:2000]}")
    assert [a["prediction"] for a in answer] == expected["prediction"].tolist()
    assert [a["probability"] for a in answer] == pytest.approx(expected["probability"].tolist(), abs=1e-6)
