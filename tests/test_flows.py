"""The image and text flows through the shared jobs: the digits CNN trains with two Horovod workers in a barrier
stage and scores image bytes; the tweets flow runs end to end from `spark-submit.sh run-all --set pipeline=tweets`
on a sample."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipelines.core.config import REPO_ROOT, Config, ConfigError, load_config
from pipelines.core.delta import DeltaStore
from pipelines.flows import get_flow
from pipelines.stages.features import run_features
from pipelines.stages.ingest.run import ingest
from pipelines.stages.land_demo import demo_datasets, land_demo
from pipelines.stages.score.batch import run_score
from pipelines.stages.train import TrainResult, run_train
from tests.chain import LANDED
from tests.support.console import noise as known_noise
from tests.support.workspaces import with_mlflow_db

FAST = [LANDED, "training.epochs=12", "training.timeout_s=400", "features.stats.enabled=false",
        "training.baseline.reg_params=[0.01]"]


@pytest.fixture(scope="module")
def digits(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory,
           mlflow_db: Path) -> tuple[Config, TrainResult]:
    """Digits landed, ingested (digits only, by the profile), featurized and a CNN trained by 2 workers."""
    ws = with_mlflow_db(tmp_path_factory.mktemp("digits"), mlflow_db)
    cfg = load_config("local", [f"storage.workspace={ws}", "pipeline=digits", *FAST])
    store = DeltaStore(spark)
    land_demo(cfg.catalog.landing, cfg.demo.fraction, cfg.demo.seed, demo_datasets(cfg))
    ingest(spark, cfg, store, "t")
    flow = get_flow(cfg)
    run_features(spark, cfg, store, flow)
    return cfg, run_train(spark, cfg, store, flow)


def test_profile_selects_the_flow() -> None:
    cfg = load_config("local", ["pipeline=digits"])
    assert (cfg.flow.kind, cfg.training.network.kind, cfg.features.output_table) == ("image", "cnn", "digit_features")
    assert load_config("local", ["pipeline=tweets"]).flow.kind == "text"
    assert load_config("local").flow.kind == "tabular"
    with pytest.raises(ConfigError, match="unknown pipeline 'nope'"):
        load_config("local", ["pipeline=nope"])
    with pytest.raises(ConfigError, match=r"flow.split.*sum < 1"):
        load_config("local", ["pipeline=digits", "flow.split.test=0.5", "flow.split.validation=0.5"])


def test_cnn_trains_with_two_workers(digits: tuple[Config, TrainResult]) -> None:
    cfg, result = digits
    assert [w.rank for w in result.workers] == [0, 1]
    assert len({w.weights_sha256 for w in result.workers}) == 1  # Horovod kept the ranks in step
    assert result.test["accuracy"] > 0.85 and result.baseline_test is not None
    assert result.baseline_test["accuracy"] > 0.85
    assert (result.registered_model, result.version, result.alias) == ("digit-classifier", "1", "champion")
    mlflow.set_tracking_uri(cfg.tracking_uri)
    run = mlflow.get_run(result.run_id)
    assert run.data.params["num_classes"] == "10" and run.data.params["input_shape"] == "[8, 8, 1]"
    assert run.data.metrics["pyfunc_check_max_abs_diff"] <= 1e-5
    artifacts = {a.path for a in MlflowClient().list_artifacts(result.run_id, "plots")}
    assert "plots/confusion_matrix_test.png" in artifacts


def test_pyfunc_scores_image_bytes(digits: tuple[Config, TrainResult]) -> None:
    """The model takes raw PNG bytes (no paths, no preprocessing by the caller); bytes that are no image give a
    marked row, not a failure."""
    cfg, result = digits
    model = mlflow.pyfunc.load_model(result.model_uri)
    files = sorted((Path(cfg.catalog.landing) / "digits" / "0").glob("digit_*.png"))[:5]
    out = model.predict(pd.DataFrame({"content": [f.read_bytes() for f in files] + [b"not an image"]}))
    assert out["label"].tolist()[:5].count("0") >= 4 and out["prediction"].iloc[:5].between(0, 9).all()
    assert out["prediction"].iloc[-1] == -1 and out["label"].iloc[-1] is None and np.isnan(out["probability"].iloc[-1])
    from PIL import Image

    buf = io.BytesIO()
    Image.open(files[0]).resize((32, 32)).save(buf, format="JPEG")  # another size and format: decoded the same way
    assert model.predict(pd.DataFrame({"content": [buf.getvalue()]}))["prediction"].iloc[0] >= 0


def test_score_image_bytes_into_gold(spark: SparkSession, digits: tuple[Config, TrainResult]) -> None:
    cfg, result = digits
    store = DeltaStore(spark)
    out = run_score(spark, cfg, store, get_flow(cfg))
    assert out["rows_in"] == out["rows_scored"] == 1797 and out["model_version"] == "1"
    assert out["accuracy_test"] == pytest.approx(result.test["accuracy"])  # serving path == training evaluation
    gold = store.read(cfg.catalog.path("predictions"))
    assert gold.count() == 1797 and gold.filter(F.col("prediction") < 0).count() == 0
    again = run_score(spark, cfg, store, get_flow(cfg))
    assert again["gold_version"] == out["gold_version"] + 1
    assert store.read(cfg.catalog.path("predictions")).count() == 1797  # replaced, not appended


def test_text_flow_end_to_end_through_spark_submit(tmp_path: Path) -> None:
    """The tweets profile through `run-all`, its text classifier trained with PyTorch (digits' CNN trains with Keras
    above): better than the majority class, scored through spark_udf with the training's own accuracy."""
    ws = tmp_path / "ws"
    sets = [f"--set={s}" for s in ["pipeline=tweets", "demo.fraction=0.3", *FAST, "flow.num_features=1024",
                                   "flow.word2vec_size=16", "training.epochs=6", "training.framework=pytorch"]]
    env = {**os.environ, "PIPELINE_HOME": str(ws)}
    res = subprocess.run([str(REPO_ROOT / "spark-submit.sh"), "run-all", *sets], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    cfg = load_config("local", [f"storage.workspace={ws}", "pipeline=tweets"])
    mlflow.set_tracking_uri(cfg.tracking_uri)
    client = MlflowClient()
    champion = client.get_model_version_by_alias("tweet-source", "champion")
    train_run = mlflow.get_run(champion.run_id)
    train = train_run.data.metrics
    features = mlflow.get_run(train_run.data.params["features_run_id"]).data.metrics
    majority = max(v for k, v in features.items() if k.startswith("test.class.")) / features["test.rows"]
    assert train["num_classes"] == 4 and 0.4 < majority < 0.6  # Web Client: about half of the tweets
    assert train_run.data.params["framework"] == "pytorch"  # the text classifier trained by two DDP ranks
    assert train["test_accuracy"] > majority + 0.02 and train["baseline_test_accuracy"] > majority + 0.02
    exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    jobs = {r.data.tags["job"] for r in client.search_runs([exp.experiment_id])}
    assert {"ingest", "features", "train", "score"} <= jobs and "monitor" not in jobs
    score = client.search_runs([exp.experiment_id], "tags.job = 'score'")[0].data.metrics
    assert score["rows_in"] == 6228 == score["rows_scored"]
    assert score["accuracy_test"] == pytest.approx(train["test_accuracy"])  # the serving path gives the same
    assert not (Path(cfg.catalog.landing) / "flights").exists()  # the profile lands only what its flow needs
    # The console as a user sees it: the stage lines, none of the known noise; the noise is in the debug log.
    console = res.stdout + res.stderr  # PythonRunner merges the driver's streams into spark-submit's stdout
    assert all(f"stage={s}" in console for s in ("land-demo.tweets", "ingest.tweets", "train.fit", "score.predict"))
    for noise in ("FutureWarning", "DeprecationWarning", "oneDNN", "cpu_feature_guard", "env_manager",
                  "Downloading artifacts", "An input example was not provided"):
        assert noise not in console, noise
    assert not known_noise(console), known_noise(console)
    (debug,) = (ws / "logs").glob("run-all-*.log")
    assert f"debug log: {debug}" in console
    text = debug.read_text()
    assert " DEBUG " in text and "env_manager" in text and "stage=score.predict" in text


def test_hash_split_of_paths_ignores_where_the_landing_zone_is(spark: SparkSession) -> None:
    from pipelines.core.config import HashSplitConf
    from pipelines.flows.labels import hash_split

    paths = [f"{root}/{c}/digit_{i:04d}.png" for root in ("file:///a/landing/digits", "hdfs://nn/x/digits")
             for c in range(3) for i in range(40)]
    df = spark.createDataFrame([(p,) for p in paths], "path string")
    rows = hash_split(df, "path", HashSplitConf(key_segments=2)).collect()
    by_file = {}
    for r in rows:
        by_file.setdefault(r.path.split("digits/")[1], set()).add(r.split)
    assert len(by_file) == 120 and all(len(s) == 1 for s in by_file.values())
    assert {s for v in by_file.values() for s in v} == {"train", "validation", "test"}
    whole = hash_split(df, "path", HashSplitConf()).collect()
    assert sum(a.split != b.split for a, b in zip(rows, whole, strict=True)) > 0  # the whole path hashes differently
