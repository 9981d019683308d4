"""MLlib baselines on the same feature vectors, each tuned with TrainValidationSplit on the train split: binary
LogisticRegression, GBTClassifier and RandomForestClassifier, multinomial LogisticRegression, or LinearRegression
for regression.

The TF model is judged against them on the same test rows with the same metric code, and a binary threshold is
chosen on the same validation split, so the comparison is like for like. The best baseline is the one with the
best validation metric (not test: choosing on test would flatter it). They are fitted on at most
`training.baseline.max_train_rows` train rows (a seeded sample), and always judged on every validation and test row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pyspark.ml.classification import GBTClassifier, LogisticRegression, RandomForestClassifier
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.tuning import ParamGridBuilder, TrainValidationSplit
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipelines.core.config import BaselineConf
from pipelines.training.evaluate import best_f1_threshold, binary_metrics

VECTOR = "features_vector"
WEIGHT = "class_weight"


@dataclass
class BaselineResult:
    kind: str
    best_params: dict[str, Any]
    validation: dict[str, float]
    test: dict[str, float]
    test_labels: np.ndarray
    test_scores: np.ndarray  # binary: P(1); multiclass: probabilities [rows, classes]; regression: values
    threshold: float | None = None  # binary only


def train_rows(prepared: DataFrame, conf: BaselineConf, seed: int) -> DataFrame:
    """The train split the baseline is tuned and fitted on: a seeded sample of about `max_train_rows` rows when the
    split is bigger (tree ensembles on every row cost minutes for little change); judged on every validation and
    test row either way."""
    train = prepared.filter(F.col("split") == "train")
    if conf.max_train_rows is None:
        return train
    total = train.count()
    return train.sample(fraction=conf.max_train_rows / total, seed=seed) if total > conf.max_train_rows else train


def _estimator(kind: str, conf: BaselineConf, seed: int) -> tuple[Any, list[Any]]:
    """The binary estimator of `kind` and its grid from config."""
    if kind == "gbt":
        gbt = GBTClassifier(featuresCol=VECTOR, labelCol="label", weightCol=WEIGHT, maxIter=conf.gbt.max_iter,
                            seed=seed)
        return gbt, (ParamGridBuilder().addGrid(gbt.maxDepth, conf.gbt.max_depths)
                     .addGrid(gbt.stepSize, conf.gbt.step_sizes).build())
    if kind == "rf":
        rf = RandomForestClassifier(featuresCol=VECTOR, labelCol="label", weightCol=WEIGHT, seed=seed)
        return rf, (ParamGridBuilder().addGrid(rf.numTrees, conf.rf.num_trees)
                    .addGrid(rf.maxDepth, conf.rf.max_depths).build())
    est = LogisticRegression(featuresCol=VECTOR, labelCol="label", weightCol=WEIGHT, maxIter=conf.max_iter)
    return est, _grid(est, conf)


def _prepared(data: DataFrame, weight: Column | None = None) -> DataFrame:
    """split, label (double), the features as an MLlib vector and, for the classifiers, the per-row class weight."""
    return data.select("split", F.col("label").cast("double").alias("label"), array_to_vector("features").alias(VECTOR),
                       *([weight.alias(WEIGHT)] if weight is not None else []))


def _tune_and_score(prepared: DataFrame, est: Any, grid: list[Any], evaluator: Any, conf: BaselineConf, seed: int,
                    output: Column) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    """Tune `est` over `grid` with TrainValidationSplit on the train rows, then score every validation and test
    row: (the best model's grid params, split -> its rows' `label` and `output` as `out`)."""
    tvs = TrainValidationSplit(estimator=est, estimatorParamMaps=grid, trainRatio=conf.train_ratio,
                               evaluator=evaluator, parallelism=conf.parallelism, seed=seed)
    model = tvs.fit(train_rows(prepared, conf, seed))
    best = model.bestModel
    best_params = {p.name: best.getOrDefault(p) for p in grid[0]}
    scored = (model.transform(prepared.filter(F.col("split").isin("validation", "test")))
              .select("split", "label", output.alias("out")).toPandas())
    return best_params, {split: scored[scored["split"] == split] for split in ("validation", "test")}


def _grid(est: Any, conf: BaselineConf) -> list[Any]:
    """The linear models' grid: regParam x elasticNetParam."""
    return (ParamGridBuilder().addGrid(est.regParam, conf.reg_params)
            .addGrid(est.elasticNetParam, conf.elastic_net_params).build())


def train_baseline(data: DataFrame, conf: BaselineConf, class_weight: dict[int, float] | None,
                   seed: int, kind: str = "logreg") -> BaselineResult:
    """Binary baseline `kind` (logreg | gbt | rf): tune on the train split (TrainValidationSplit), pick the threshold
    on validation, evaluate on test."""
    w = class_weight or {0: 1.0, 1: 1.0}
    prepared = _prepared(data, F.when(F.col("label") == 1, w[1]).otherwise(w[0]))
    est, grid = _estimator(kind, conf, seed)
    best_params, out = _tune_and_score(prepared, est, grid,
                                       BinaryClassificationEvaluator(labelCol="label", metricName="areaUnderROC"),
                                       conf, seed, vector_to_array("probability")[1])
    val, test = out["validation"], out["test"]
    threshold, _ = best_f1_threshold(val["label"].to_numpy(), val["out"].to_numpy())
    y, p = test["label"].to_numpy().astype(int), test["out"].to_numpy()
    return BaselineResult(
        kind, best_params,
        binary_metrics(val["label"].to_numpy().astype(int), val["out"].to_numpy(), threshold),
        binary_metrics(y, p, threshold), y, p, threshold,
    )


def train_multiclass_baseline(data: DataFrame, conf: BaselineConf, class_weight: dict[int, float] | None,
                              seed: int, classes: list[str]) -> BaselineResult:
    """Multinomial logistic regression (the only MLlib kind here that gives class probabilities for any number
    of classes) tuned on accuracy with TrainValidationSplit on train; judged on validation and test."""
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator

    from pipelines.training.evaluate import multiclass_metrics

    weight = F.lit(1.0)
    for k, w in (class_weight or {}).items():
        weight = F.when(F.col("label") == k, F.lit(w)).otherwise(weight)
    est = LogisticRegression(featuresCol=VECTOR, labelCol="label", weightCol=WEIGHT, maxIter=conf.max_iter,
                             family="multinomial")
    best_params, out = _tune_and_score(_prepared(data, weight), est, _grid(est, conf),
                                       MulticlassClassificationEvaluator(labelCol="label", metricName="accuracy"),
                                       conf, seed, vector_to_array("probability"))
    judged = {}
    for split, part in out.items():
        y = part["label"].to_numpy().astype(int)
        proba = np.stack(part["out"].to_numpy()) if len(part) else np.zeros((0, len(classes)))
        judged[split] = (y, proba, multiclass_metrics(y, proba, classes))
    return BaselineResult("logreg", best_params, judged["validation"][2], judged["test"][2], judged["test"][0],
                          judged["test"][1])


def train_regression_baseline(data: DataFrame, conf: BaselineConf, seed: int) -> BaselineResult:
    """LinearRegression (regParam x elasticNetParam grid) tuned on RMSE with TrainValidationSplit on train; judged
    on validation and test."""
    from pyspark.ml.evaluation import RegressionEvaluator
    from pyspark.ml.regression import LinearRegression

    from pipelines.training.evaluate import regression_metrics

    est = LinearRegression(featuresCol=VECTOR, labelCol="label", maxIter=conf.max_iter)
    best_params, out = _tune_and_score(_prepared(data), est, _grid(est, conf),
                                       RegressionEvaluator(labelCol="label", metricName="rmse"), conf, seed,
                                       F.col("prediction"))
    judged = {}
    for split, part in out.items():
        y, pred = part["label"].to_numpy(dtype="float64"), part["out"].to_numpy(dtype="float64")
        judged[split] = (y, pred, regression_metrics(y, pred))
    return BaselineResult("linreg", best_params, judged["validation"][2], judged["test"][2], judged["test"][0],
                          judged["test"][1])
