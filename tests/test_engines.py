"""The chain once on the embedded engine (everything else in the suite runs on delta-spark): run-all through
spark-submit.sh with `storage.engine=embedded`, so its JVM has no Delta jars at all; then the same re-runs on
both engines continue its tables identically (exactly-once ingest, one partition replaced on re-score)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
from pyspark.sql import SparkSession

from jobs import ingest as ingest_job
from jobs import score as score_job
from pipelines.core.config import REPO_ROOT, load_config
from pipelines.core.delta import DeltaStore, to_pandas
from tests.chain import FAST_TRAINING, FLIGHT_SOURCES, LANDED
from tests.support.console import beside_stages, noise


def _versions(store: DeltaStore, paths: list[str]) -> dict[str, int | None]:
    return {p: store.version(p) for p in paths}


def test_run_all_on_embedded_engine_then_both_engines_continue(spark: SparkSession, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    sets = ["storage.engine=embedded", "demo.fraction=0.01", LANDED, *FAST_TRAINING]
    res = subprocess.run([str(REPO_ROOT / "spark-submit.sh"), "run-all", *[f"--set={s}" for s in sets]],
                         cwd=REPO_ROOT, env={**os.environ, "PIPELINE_HOME": str(ws)}, capture_output=True,
                         text=True, timeout=1500)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert not noise(res.stdout + res.stderr), noise(res.stdout + res.stderr)
    cfg = load_config("local", [f"storage.workspace={ws}", *sets])
    dry = subprocess.run([sys.executable, "-m", "pipelines.submit", "run-all", "--set=storage.engine=embedded",
                          "--dry-run"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0 and "--jars" not in dry.stdout and "delta" not in dry.stdout.lower()  # no Delta jars

    # Counted independently of Spark: landed data lines vs bronze (read with delta-rs), gold vs the test split.
    landed = sum(len(f.read_text().splitlines()) - 1 for f in (Path(cfg.catalog.landing) / "flights").glob("*.csv"))
    bronze = {s: cfg.catalog.path(cfg.ingest.sources[s].table) for s in FLIGHT_SOURCES}
    assert len(to_pandas(bronze["flights"])) == landed > 0
    date = cfg.flow.date_name
    silver = to_pandas(cfg.catalog.path("features"), columns=["split", date])
    test_dates = sorted(silver[silver["split"] == "test"][date].astype(str).unique())
    gold_path = cfg.catalog.path("predictions")
    gold = to_pandas(gold_path)
    key = cfg.flow.key
    assert sorted(gold[date].astype(str).unique()) == test_dates and len(test_dates) > 0
    assert len(gold) == len(gold.drop_duplicates(key)) > 0
    log_path = cfg.catalog.path("ingest_log")
    tables = [*bronze.values(), log_path, gold_path, cfg.catalog.path("drift")]
    embedded, ds = DeltaStore(spark, "embedded"), DeltaStore(spark, "delta-spark")
    assert set(_versions(embedded, tables).values()) == {0}  # one commit each
    assert _versions(ds, tables) == _versions(embedded, tables)
    mlflow.set_tracking_uri(cfg.tracking_uri)
    ingest_run = mlflow.search_runs(experiment_names=[cfg.mlflow.experiment], filter_string="tags.job = 'ingest'")
    assert ingest_run.iloc[0]["params.storage.engine"] == "embedded"

    args = ["--set", f"storage.workspace={ws}", "--set", "demo.fraction=0.01"]
    for engine in ("embedded", "delta-spark"):  # re-ingest: every file is known, no table gets a commit
        assert ingest_job.main([*args, "--set", f"storage.engine={engine}"]) == 0, engine
        assert set(_versions(embedded, tables).values()) == {0}, engine
    day = test_dates[0]
    before = to_pandas(gold_path)
    for version, engine in enumerate(("embedded", "delta-spark"), start=1):  # re-score one date: replaced
        if engine == "embedded":
            assert score_job.main([*args, "--set", f"storage.engine={engine}", "--date", day]) == 0, engine
        else:  # as the schedule runs it: its console is the stage lines and at most a few more, none known noise
            score = subprocess.run([str(REPO_ROOT / "spark-submit.sh"), "score", *args, "--set",
                                    f"storage.engine={engine}", "--date", day], cwd=REPO_ROOT,
                                   env={**os.environ, "PIPELINE_HOME": str(ws)}, capture_output=True, text=True,
                                   timeout=600)
            console = score.stdout + score.stderr
            assert score.returncode == 0, console[-4000:]
            assert "stage=score.predict" in console and len(beside_stages(console)) <= 5, console
            assert not noise(console), console
        after = to_pandas(gold_path)
        assert embedded.version(gold_path) == ds.version(gold_path) == version, engine
        assert len(after) == len(before) and len(after) == len(after.drop_duplicates(key)), engine
        others = before[date].astype(str) != day
        pd.testing.assert_frame_equal(
            after[after[date].astype(str) != day].sort_values(key).reset_index(drop=True),
            before[others].sort_values(key).reset_index(drop=True))  # the other dates untouched
        assert (after[after[date].astype(str) == day]["scored_at"].min()
                > before[~others]["scored_at"].max()), engine
        before = after
    history = ds.history(gold_path)
    assert [h["version"] for h in history] == [2, 1, 0]
    assert all(h["metadata"].get("model") == "flight-delay/1" for h in history)
