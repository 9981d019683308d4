"""Driver-side evaluation: the trained network rebuilt on the driver from rank 0's weights, scored on the validation
and test splits (a seeded sample above EVAL_ROWS) with the head's threshold and metrics, and the logged pyfunc
checked against it through Spark, exactly as scoring will call it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.core.config import Config, TrainingConf
from pipelines.core.delta import DeltaStore
from pipelines.training import pyfunc
from pipelines.training.evaluate import features_matrix
from pipelines.training.inputs import Task, TrainingData

if TYPE_CHECKING:
    from pipelines.flows.base import Flow

EVAL_ROWS = 500_000  # validation/test rows scored on the driver for threshold and metrics (seeded sample above)
PARITY_ROWS = 256  # test rows the logged pyfunc must reproduce through Spark


@dataclass
class Evaluation:
    """The Keras model on validation and test: the head's threshold (chosen on validation; None but for binary),
    both splits' metrics, and the test labels and scores the plots and the comparison report use."""

    threshold: float | None
    validation: dict[str, float]
    test: dict[str, float]
    test_labels: np.ndarray
    test_scores: np.ndarray


def trained_model(tc: TrainingConf, task: Task, data: TrainingData, weights: list[Any]) -> Any:
    """The network of `tc` for `task`, holding `weights` (rank 0's best-epoch weights): a Keras model, or a
    torch_net.TorchModel (training.framework pytorch) with the same `predict` and `save`."""
    if tc.framework == "pytorch":
        from pipelines.training import torch_net

        desc = torch_net.description(tc.network.model_dump(mode="json"), task.record.vector_size, task.head.name,
                                     task.num_classes, task.input_shape, data.label_scale)
        return torch_net.TorchModel.from_arrays(desc, weights)
    from pipelines.training.model import build_network

    model = build_network(tc.network.model_dump(mode="json"), task.record.vector_size, task.head.name,
                          task.num_classes, task.input_shape, data.label_scale)
    model.set_weights(weights)
    return model


def model_matrix(features: pd.Series, task: Task) -> np.ndarray:
    """Stored flat feature arrays -> the network's input batch (reshaped to the task's input shape, if any)."""
    x = features_matrix(features, task.record.vector_size)
    return x.reshape((-1, *task.input_shape)) if task.input_shape else x


def predict_on_driver(model: Any, df: DataFrame, task: Task, seed: int, max_rows: int = EVAL_ROWS
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(labels, the head's scores of the Keras model) for `df`, scored on the driver; above `max_rows` rows a
    seeded sample."""
    rows = df.count()
    if rows > max_rows:
        df = df.sample(fraction=max_rows / rows, seed=seed)
    pdf = df.select("label", "features").toPandas()
    raw = model.predict(model_matrix(pdf["features"], task), batch_size=4096, verbose=0)
    return task.head.labels(pdf["label"].to_numpy()), task.head.scores(raw.astype("float64"))


def evaluate_model(model: Any, task: Task, data: TrainingData, seed: int) -> Evaluation:
    """The model on validation (where the threshold is chosen) and test, with the head's metrics."""
    head = task.head
    validation = predict_on_driver(model, data.split("validation"), task, seed)
    test = predict_on_driver(model, data.split("test"), task, seed)
    threshold = head.threshold(*validation)
    return Evaluation(threshold, head.metrics(*validation, threshold, task.classes),
                      head.metrics(*test, threshold, task.classes), *test)


def validation_metric(model: Any, task: Task, data: TrainingData, seed: int, metric: str) -> float:
    """`metric` of the model on the validation split alone (a search trial's value; test is never looked at)."""
    y, scores = predict_on_driver(model, data.split("validation"), task, seed)
    return float(task.head.metrics(y, scores, task.head.threshold(y, scores), task.classes)[metric])


def check_pyfunc(spark: SparkSession, cfg: Config, store: DeltaStore, flow: Flow, task: Task, model_uri: str,
                 model: Any) -> float:
    """The logged pyfunc, run as a Spark UDF on test rows exactly as scoring will (the flow gives its input: image
    bytes from bronze, or the feature arrays), must reproduce the Keras model; returns the largest difference."""
    udf = pyfunc.spark_udf(spark, model_uri, task.head.result_type)
    record = task.record
    test = (store.read(record.table_path, record.table_version)
            .filter(F.col("label").isNotNull() & (F.col("split") == "test")).limit(PARITY_ROWS))
    rows, column = flow.model_input(cfg, store, record, test)
    scored = rows.select("features", udf(column).alias("out")).toPandas()
    if scored.empty:
        raise RuntimeError(f"the pyfunc check of {model_uri} found no test rows to score")
    expected = model.predict(model_matrix(scored["features"], task), verbose=0)
    diff, same = task.head.parity(expected.astype("float64"), scored["out"])
    if not same:
        raise RuntimeError(f"the logged model {model_uri} does not reproduce the trained model "
                           f"(max |difference| {diff} over {len(scored)} rows)")
    return diff
