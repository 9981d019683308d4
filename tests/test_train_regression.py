"""The regression head end to end: a real regression feature table (scikit-learn's diabetes data: ten measurements,
disease progression one year later as the label) written and logged the way the features job does, trained by the
one trainer with two Horovod (or PyTorch DDP) workers in a barrier stage, judged against MLlib's LinearRegression,
served by the one serving model, and promoted on RMSE (lower is better). Plus the heads' own choices, without Spark."""

from __future__ import annotations

from collections.abc import Callable

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from pyspark.ml import Pipeline
from pyspark.ml.feature import StandardScaler, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore
from pipelines.core.recorder import FEATURES_JOB, PREPROCESSING_ARTIFACT, FeaturesRecord, Recorder
from pipelines.flows import get_flow
from pipelines.flows.base import FEATURES, LABEL, VECTOR_COL
from pipelines.stages.features import save_preprocessing
from pipelines.stages.train import run_train
from pipelines.training import pyfunc
from pipelines.training.heads import TrainingInputError, get_head
from pipelines.training.registry import CHALLENGER, CHAMPION

SMALL = ["training.epochs=25", "training.batch_size=32", "training.optimizer.warmup_epochs=1",
         "training.optimizer.learning_rate=0.005", "training.max_steps_per_epoch=6",
         "training.data.shuffle_buffer=500", "training.early_stopping.patience=25",
         "training.network.mlp.hidden_units=[16]", "training.network.mlp.dropout=0.0",
         "training.baseline.reg_params=[0.0, 0.1]", "training.baseline.elastic_net_params=[0.0]",
         "training.timeout_s=300"]
REGRESSION = "flow.label={kind: regression, column: progression}"  # the tabular flow with a numeric label


def make_diabetes_features_run(spark: SparkSession, cfg: Config, store: DeltaStore, head: str = "regression") -> str:
    """The diabetes data as a silver feature table (patient id, split by a hash of it, label double, scaled
    features) at cfg.catalog.path("features"), recorded as a features run the way the features job records one
    (pipelines.core.recorder); its run id."""
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    names = [f"m_{n}" for n in d.feature_names]
    pdf = pd.DataFrame(d.data, columns=names).assign(patient=np.arange(len(d.target)), label=d.target.astype(float))
    u = (F.abs(F.xxhash64(F.col("patient"), F.lit(11))) % 100) / 100.0
    df = spark.createDataFrame(pdf).withColumn(
        "split", F.when(u < 0.15, "test").when(u < 0.30, "validation").otherwise("train"))
    prep = Pipeline(stages=[VectorAssembler(inputCols=names, outputCol="assembled"),
                            StandardScaler(inputCol="assembled", outputCol=VECTOR_COL, withMean=True)])
    model = prep.fit(df.filter("split = 'train'"))
    table = model.transform(df).select("patient", "split", F.col("label").cast("double").alias(LABEL),
                                       vector_to_array(VECTOR_COL, "float32").alias(FEATURES))
    path = cfg.catalog.path("features")
    version = store.write(table, path, "overwrite")
    with Recorder.start(cfg, FEATURES_JOB) as rec:
        model_path = save_preprocessing(model, cfg, rec.run_id, rec)
        rec.features_run(FeaturesRecord(rec.run_id, path, version, model_path,
                                        f"runs:/{rec.run_id}/{PREPROCESSING_ARTIFACT}", len(names), head=head),
                         cfg.features.output_table)
        return rec.run_id


# ---- the heads, without Spark ------------------------------------------------------------------------------------
def test_heads_are_chosen_by_name_and_own_their_choices() -> None:
    binary, multi, reg = get_head("binary"), get_head("multiclass"), get_head("regression")
    with pytest.raises(ValueError, match="unknown head 'ordinal'"):
        get_head("ordinal")
    assert (binary.loss(), multi.loss(), reg.loss()) == ("binary_crossentropy", "sparse_categorical_crossentropy",
                                                         "mean_squared_error")
    assert binary.result_type == pyfunc.RESULT_TYPE == "probability double, prediction int"
    assert multi.result_type == pyfunc.CLASSIFIER_RESULT_TYPE == "prediction int, label string, probability double"
    assert reg.result_type == "prediction double"
    es = {"monitor": "val_auc", "patience": 3, "min_delta": 0.0}
    assert binary.early_stopping(es)["monitor"] == "val_auc"
    assert (multi.early_stopping(es)["monitor"], multi.early_stopping(es)["mode"]) == ("val_accuracy", "max")
    assert (reg.early_stopping(es)["monitor"], reg.early_stopping(es)["mode"]) == ("val_rmse", "min")
    assert binary.promotion("roc_auc") == ("roc_auc", False) and multi.promotion("roc_auc") == ("accuracy", False)
    assert reg.promotion("roc_auc") == ("rmse", True)
    assert binary.class_weights({0: 300, 1: 100}, 2) == {0: 400 / 600, 1: 2.0}
    assert multi.class_weights({0: 10, 1: 10, 2: 10}, 3) == {0: 1.0, 1: 1.0, 2: 1.0}
    assert reg.class_weights({}, 1) is None and reg.threshold(np.ones(3), np.ones(3)) is None
    with pytest.raises(TrainingInputError, match="single class"):
        binary.check_classes({1: 10}, 2)
    with pytest.raises(TrainingInputError, match=r"class ids \[2\]"):
        multi.check_classes({0: 1, 1: 1}, 3)
    m = reg.metrics(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.0, 5.0]), None, None)
    assert m["rmse"] == pytest.approx(0.5) and m["mae"] == pytest.approx(0.25) and m["r2"] == pytest.approx(0.8)


# ---- end to end --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("framework", ["tensorflow", "pytorch"])
def test_regression_trains_serves_and_promotes_on_rmse(spark: SparkSession, make_cfg: Callable[..., Config],
                                                       store: DeltaStore, framework: str) -> None:
    cfg = make_cfg(*SMALL, REGRESSION, f"training.framework={framework}")
    features_run_id = make_diabetes_features_run(spark, cfg, store)
    flow = get_flow(cfg)
    assert flow.head(cfg) == "regression"
    result = run_train(spark, cfg, store, flow)

    assert result.head == "regression" and np.isnan(result.threshold)
    assert [w.rank for w in result.workers] == [0, 1] and len({w.weights_sha256 for w in result.workers}) == 1
    assert result.features_run_id == features_run_id
    assert {"rmse", "mae", "r2"} <= set(result.test) and result.test["rows"] > 30
    assert result.baseline_test is not None and result.baseline_test["r2"] > 0.3  # a linear model explains ~half
    assert result.test["r2"] > 0.2, result.test  # the MLP learns in the label's own units (~25..346)
    assert result.test["rmse"] < 1.25 * result.baseline_test["rmse"]

    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.data.params["head"] == "regression" and run.data.params["early_stopping_monitor"] == "val_rmse"
    assert float(run.data.params["label_mean.train"]) > 100
    assert run.data.metrics["pyfunc_check_max_abs_diff"] <= 1e-3
    assert {"test_rmse", "test_mae", "test_r2", "baseline_test_rmse"} <= set(run.data.metrics)
    assert len(client.get_metric_history(result.run_id, "val_rmse")) == result.workers[0].epochs_completed
    assert run.data.tags["promote_metric"] == "rmse"
    plots = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert {"plots/predicted_vs_actual_test.png", "plots/training_history.png"} <= plots

    name = cfg.mlflow.registered_model
    assert (result.version, result.alias) == ("1", CHAMPION)
    meta = pyfunc.model_meta(result.model_uri)
    assert (meta["head"], meta["input"], meta["result_type"]) == ("regression", "features", "prediction double")
    assert meta["framework"] == framework
    assert "threshold" not in meta and "classes" not in meta
    served = mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}")
    assert [(c.name, c.type.name) for c in served.metadata.get_output_schema().inputs] == [("prediction", "double")]
    rows = (store.read(cfg.catalog.path("features")).filter("split = 'test'")
            .select("label", "features").toPandas())
    out = served.predict(rows[["features"]])
    assert list(out.columns) == ["prediction"] and out["prediction"].dtype == np.float64
    rmse = float(np.sqrt(np.mean((out["prediction"].to_numpy() - rows["label"].to_numpy()) ** 2)))
    assert rmse == pytest.approx(result.test["rmse"], rel=1e-4)  # serving path == training evaluation
    inputs = served.metadata.get_input_schema().inputs  # one float32 tensor of the vector size per row
    assert [(t.name, t.type, t.shape) for t in inputs] == [("features", np.dtype("float32"), (-1, meta["vector_size"]))]
    assert served.predict({"features": np.zeros((0, meta["vector_size"]), np.float32)}).empty

    worse = run_train(spark, make_cfg(*SMALL, REGRESSION, f"training.framework={framework}", "training.epochs=1",
                                      "training.max_steps_per_epoch=1"), store, flow)
    assert worse.test["rmse"] > result.test["rmse"] and worse.alias == CHALLENGER  # lower RMSE stays champion
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "1"


def test_a_features_run_for_another_head_is_refused(spark: SparkSession, make_cfg: Callable[..., Config],
                                                    store: DeltaStore) -> None:
    cfg = make_cfg(*SMALL, REGRESSION)
    make_diabetes_features_run(spark, cfg, store, head="binary")
    with pytest.raises(TrainingInputError, match="built for a binary model, the flow trains a regression model"):
        run_train(spark, cfg, store, get_flow(cfg))
