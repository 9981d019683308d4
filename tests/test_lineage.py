"""Lineage on the real chain (1% of flights, a two-worker Horovod champion): from one gold row down to the landing
files and from a landing file up to that row's model and predictions, every hop checked against facts counted
here independently (the registry, the training run's params, delta-rs, the files on disk hashed with hashlib)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import matplotlib.image as mpimg
from deltalake import DeltaTable
from mlflow.tracking import MlflowClient
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from jobs import lineage as lineage_job
from pipelines.core.config import REPO_ROOT, Config
from pipelines.core.delta import DeltaStore, to_pandas
from pipelines.flows import get_flow
from pipelines.stages.lineage.graph import LineageGraph, lineage
from pipelines.stages.lineage.render import to_json, to_png, to_text
from pipelines.stages.score.batch import run_score
from tests.chain import FLIGHT_SOURCES
from tests.test_scoring import D1

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _head() -> str:
    return subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


def _landed(cfg: Config) -> dict[str, tuple[int, str]]:
    """Every landing file of the flights sources on disk: name -> (size, sha256), hashed here."""
    out = {}
    for s in FLIGHT_SOURCES:
        for f in Path(cfg.catalog.landing).glob(cfg.ingest.sources[s].path):
            out[f.name] = (f.stat().st_size, hashlib.sha256(f.read_bytes()).hexdigest())
    return out


def _kind(graph: LineageGraph, kind: str) -> dict[str, dict]:
    return {n.id: n.attrs for n in graph.of_kind(kind)}


def _gold_row(spark: SparkSession, chain: Config) -> dict[str, str]:
    store = DeltaStore(spark)
    key = chain.flow.key
    row = (store.read(chain.catalog.path("predictions")).filter(F.col(chain.flow.date_name) == F.lit(D1))
           .orderBy(*key).first())
    return {k: str(row[k]) for k in key}


def test_lineage_down_from_a_prediction_and_up_from_a_landing_file(spark: SparkSession, chain: Config,
                                                                   tmp_path: Path) -> None:
    store = DeltaStore(spark)
    scored = run_score(spark, chain, store, get_flow(chain), [D1])
    key = _gold_row(spark, chain)
    graph = lineage(chain, store, key=key, day=D1)

    client = MlflowClient(tracking_uri=chain.tracking_uri)
    name = chain.mlflow.registered_model
    champion = client.get_model_version_by_alias(name, "champion")
    train = client.get_run(champion.run_id)
    start = graph.nodes[graph.start]
    assert start.kind == "prediction" and start.attrs["model_version"] == str(champion.version)
    assert start.attrs["model_run_id"] == champion.run_id
    model_id = f"model:{name}/{champion.version}"
    assert list(_kind(graph, "model_version")) == [model_id]
    assert {(e.src, e.kind) for e in graph.inputs(graph.start)} >= {(model_id, "predicted")}
    # the score run that wrote the row: the one that recorded this gold version, and its git commit
    score = client.get_run(start.attrs["score_run_id"])
    assert score.data.tags["job"] == "score" and start.attrs["written_in_version"] == scored["gold_version"]
    assert score.data.tags[f"table_version.gold.{chain.scoring.table}"] == str(scored["gold_version"])
    # model version -> its training run -> the feature table version the run logged
    assert [(e.src, e.kind) for e in graph.inputs(model_id)] == [(f"run:{champion.run_id}", "registered")]
    assert graph.nodes[f"run:{champion.run_id}"].attrs["git_commit"] == _head()
    features_table = f"table:features@{train.data.params['feature_table_version']}"
    assert list(_kind(graph, "feature_table_version")) == [features_table]
    features_run = train.data.params["features_run_id"]
    assert (f"run:{features_run}", features_table, "wrote") in {(e.src, e.dst, e.kind) for e in graph.edges}
    assert f"preprocessing:{features_run}" in graph.nodes
    # the features run's bronze versions = each table's Delta version (one ingest), read with delta-rs
    bronze = {chain.ingest.sources[s].table: DeltaTable(chain.catalog.path(chain.ingest.sources[s].table)).version()
              for s in FLIGHT_SOURCES}
    assert graph.nodes[f"run:{features_run}"].attrs["bronze_versions"] == bronze
    assert set(_kind(graph, "bronze_version")) == {f"table:{t}@{v}" for t, v in bronze.items()}
    # bronze -> the ingest runs whose rows it holds -> the landing files with the sizes and hashes on disk
    runs = set().union(*(set(to_pandas(chain.catalog.path(t), v, ["_run_id"])["_run_id"]) for t, v in bronze.items()))
    for t, v in bronze.items():  # each table's files come through its own ingest run node
        sources = {s for s in FLIGHT_SOURCES if chain.ingest.sources[s].table == t}
        for e in graph.inputs(f"table:{t}@{v}"):
            assert {graph.nodes[f.src].attrs["source"] for f in graph.inputs(e.src)} == sources
    assert {a["run_id"] for a in _kind(graph, "ingest_run").values()} == runs
    assert all(a["git_commit"] == _head() for a in _kind(graph, "ingest_run").values())
    files = {a["name"]: (a["size"], a["sha256"]) for a in _kind(graph, "landing_file").values()}
    assert files == _landed(chain) and len(files) >= len(FLIGHT_SOURCES)
    text = to_text(graph)
    assert champion.run_id in text and next(iter(files.values()))[1] in text

    # up: from one landing file to the model trained on it and the predictions it made
    landing = sorted(f for f in files if f.startswith("flights"))[-1]
    up = lineage(chain, store, file=landing)
    assert model_id in up.nodes and f"run:{features_run}" in up.nodes and features_table in up.nodes
    gold = to_pandas(chain.catalog.path("predictions"), columns=["model_name", "model_version"])
    made = (gold["model_name"] == name) & (gold["model_version"] == str(champion.version))
    predictions = up.nodes[f"predictions:{model_id}"]
    assert predictions.attrs["rows"] == int(made.sum()) > 0
    assert predictions.attrs["version"] == DeltaTable(chain.catalog.path("predictions")).version()
    assert (model_id, predictions.id, "predicted") in {(e.src, e.dst, e.kind) for e in up.edges}

    png = to_png(graph, tmp_path / "lineage.png")
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 0
    height, width = mpimg.imread(png).shape[:2]
    assert height > 100 and width > 300
    parsed = json.loads(to_json(up))
    assert {n["id"] for n in parsed["nodes"]} == set(up.nodes) and parsed["edges"]


def test_lineage_job_through_spark_submit_and_unknown_versions(spark: SparkSession, chain: Config,
                                                                tmp_path: Path) -> None:
    base = ["--set", f"storage.workspace={chain.workspace}"]
    assert lineage_job.main([*base, "--table", "flights", "--table-version", "99"]) == 2
    assert lineage_job.main([*base, "--model-version", "99"]) == 2
    assert lineage_job.main([*base, "--file", "no_such_file.csv"]) == 2

    store = DeltaStore(spark)
    if not store.exists(chain.catalog.path("predictions")):
        run_score(spark, chain, store, get_flow(chain), [D1])
    key = ",".join(f"{k}={v}" for k, v in _gold_row(spark, chain).items())
    out, png = tmp_path / "graph.json", tmp_path / "graph.png"
    res = subprocess.run([str(REPO_ROOT / "spark-submit.sh"), "lineage", *base, "--key", key, "--date", D1.isoformat(),
                          "--json", str(out), "--png", str(png)], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=600, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "[prediction]" in res.stdout and "[landing_file]" in res.stdout
    graph = json.loads(out.read_text())
    kinds = {n["kind"] for n in graph["nodes"]}
    assert {"prediction", "model_version", "train_run", "features_run", "bronze_version", "ingest_run",
            "landing_file"} <= kinds
    assert png.read_bytes()[:8] == PNG_MAGIC
