"""Training heads: what a binary, a multiclass and a regression model do differently, in one place.

A head is chosen by name ("binary" | "multiclass" | "regression"; the flow says which) and owns, on the worker
side, the output layer and its activation, the loss, the Keras metrics, the training target and per-row weights,
and the early-stopping monitor; on the driver side, the class weights, the decision threshold (binary), the
evaluation metrics, the plots, the MLlib baseline, the pyfunc's signature and result type, and the metric (and its
direction) that decides promotion. The serving model (serving.py) reads the head's name from meta.json and
produces the same output columns (`outputs`).

TensorFlow, scikit-learn, MLflow and MLlib are imported inside the methods: the worker process imports this module
without Spark, the driver without paying for TensorFlow until it builds a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

LOWER_IS_BETTER = frozenset({"rmse", "mae", "log_loss", "loss"})


class TrainingInputError(ValueError):
    """The feature table or an argument cannot be used (no features run, empty split, bad --resume)."""


class Head:
    """The interface; one subclass per task. Class attributes describe it, methods act on arrays and frames."""

    name: str
    label_type: str  # Spark type `label` is cast to for training: int (class id) or double (value)
    outputs: tuple[tuple[str, str], ...]  # serving output columns (name, MLflow type), in order
    monitors: tuple[str, ...]  # early-stopping monitors it logs; the first is its default
    promote_metric: str  # default test metric of the champion comparison
    metric_names: tuple[str, ...]  # evaluation metrics a promote_metric may name
    classified: bool = True  # labels are class ids: class weights, per-class counts

    # ---- shared by both sides ---------------------------------------------------------------------------------
    @property
    def result_type(self) -> str:
        """Spark struct of the serving output (spark_udf's result_type)."""
        spark = {"double": "double", "integer": "int", "string": "string", "long": "bigint"}
        return ", ".join(f"{n} {spark[t]}" for n, t in self.outputs)

    def early_stopping(self, conf: dict[str, Any]) -> dict[str, Any]:
        """EarlyStopping arguments: the configured monitor when this head logs it, else the head's default."""
        monitor = conf["monitor"] if conf["monitor"] in self.monitors else self.monitors[0]
        return {"monitor": monitor, "patience": conf["patience"], "min_delta": conf["min_delta"],
                "mode": "min" if monitor.removeprefix("val_") in LOWER_IS_BETTER else "max"}

    def promotion(self, configured: str) -> tuple[str, bool]:
        """(test metric deciding the champion, lower is better): the configured one when this head reports it."""
        metric = configured if configured in self.metric_names else self.promote_metric
        return metric, metric in LOWER_IS_BETTER

    # ---- worker side ------------------------------------------------------------------------------------------
    def output_layer(self, x: Any, num_classes: int, label_scale: tuple[float, float] | None = None) -> Any:
        """The output layer on top of `x`; `label_scale` = (mean, std) of the train labels (regression)."""
        raise NotImplementedError

    def loss(self) -> str:
        raise NotImplementedError

    def keras_metrics(self) -> list[Any]:
        raise NotImplementedError

    def batch(self, x: Any, label: Any, weights: Any) -> tuple[Any, ...]:
        """(features, target, per-row weight) of one batch; `weights` = per-class weight vector (or None)."""
        raise NotImplementedError

    # ---- driver side ------------------------------------------------------------------------------------------
    def class_weights(self, per_class: dict[int, int], num_classes: int) -> dict[int, float] | None:
        """Inverse class frequency on train, normalised so balanced classes all get 1.0; None when unweighted."""
        return None

    def check_classes(self, per_class: dict[int, int], num_classes: int) -> None:
        """Raise TrainingInputError when the train split cannot teach this head."""

    def scores(self, raw: np.ndarray) -> np.ndarray:
        """The Keras model's raw output [rows, units] as this head's scores (what the metrics take)."""
        return raw.reshape(-1)

    def labels(self, y: Any) -> np.ndarray:
        return np.asarray(y).astype(int)

    def threshold(self, y: np.ndarray, scores: np.ndarray) -> float | None:
        """The decision threshold chosen on validation (binary only)."""
        return None

    def metrics(self, y: np.ndarray, scores: np.ndarray, threshold: float | None,
                classes: list[str] | None) -> dict[str, float]:
        raise NotImplementedError

    def summary(self, test: dict[str, float]) -> dict[str, str]:
        """A few test metrics for the stage log line."""
        return {f"test_{k}": f"{test[k]:.4f}" for k in self.metric_names[:2]}

    def parity(self, expected: np.ndarray, out: Any) -> tuple[float, bool]:
        """(largest |difference|, whether equal) between the Keras outputs and the pyfunc's output structs."""
        raise NotImplementedError

    baseline_kinds: tuple[str, ...] = ("logreg",)  # training.baseline.kinds this head can run

    def baselines(self, data: Any, conf: Any, weights: dict[int, float] | None, seed: int,
                  classes: list[str] | None) -> list[Any]:
        """The configured MLlib baselines this head supports (others are skipped with a log line)."""
        from pipelines.core.logs import LOG

        skipped = [k for k in conf.kinds if k not in self.baseline_kinds]
        if skipped:
            LOG.info("train: baseline kinds %s skipped for the %s head (it runs %s)", skipped, self.name,
                     list(self.baseline_kinds))
        return [self.baseline(data, conf, weights, seed, classes, kind) for kind in conf.kinds
                if kind in self.baseline_kinds]

    def baseline(self, data: Any, conf: Any, weights: dict[int, float] | None, seed: int,
                 classes: list[str] | None, kind: str) -> Any:
        raise NotImplementedError

    def plots(self, out: Path, y: np.ndarray, scores: np.ndarray, threshold: float | None, baselines: list[Any],
              classes: list[str] | None, model: str) -> None:
        """The head's test plots of the trained network (labelled `model`, e.g. "Keras (horovod)"); `baselines` best
        first (the first also gets its own confusion matrix)."""
        raise NotImplementedError

    def signature(self, input_column: str, encoded: bool, threshold: float | None, vector_size: int) -> Any:
        """The pyfunc's signature: the input column (`encoded` bytes, or a float32 tensor of `vector_size` per row) in,
        `outputs` out.

        Feature vectors are a tensor spec, not a column of arrays: MLflow then checks a batch's shape and dtype
        once (the arrays stacked into one matrix) instead of converting every row's array on its own, which cost
        over 90% of spark_udf's time. Spark's array<float> column arrives as float32 arrays as declared; JSON
        requests to the model server (lists of numbers) are cast to float32 by MLflow.
        """
        import numpy as np
        from mlflow.models import ModelSignature
        from mlflow.types.schema import ColSpec, Schema, TensorSpec

        if encoded:
            inputs = Schema([ColSpec("binary", input_column)])
        else:
            inputs = Schema([TensorSpec(np.dtype("float32"), (-1, vector_size), input_column)])
        return ModelSignature(inputs=inputs, outputs=Schema([ColSpec(t, n) for n, t in self.outputs]),
                              params=self._params(threshold))

    def _params(self, threshold: float | None) -> Any:
        return None


class _Classifier(Head):
    """Binary and multiclass share class ids as labels, class weights and per-row weights by class."""

    def class_weights(self, per_class: dict[int, int], num_classes: int) -> dict[int, float] | None:
        self.check_classes(per_class, num_classes)
        n = sum(per_class.values())
        return {k: n / (num_classes * per_class[k]) for k in range(num_classes)}

    def batch(self, x: Any, label: Any, weights: Any) -> tuple[Any, ...]:
        import tensorflow as tf

        ids = tf.reshape(tf.cast(label, tf.int32), (-1,))
        return x, self._target(ids), tf.gather(weights, ids)

    def _target(self, ids: Any) -> Any:
        return ids


class BinaryHead(_Classifier):
    """Sigmoid output P(label = 1), binary cross-entropy; threshold with the best F1 on validation."""

    name = "binary"
    label_type = "int"
    outputs = (("probability", "double"), ("prediction", "integer"))
    monitors = ("val_auc", "val_pr_auc", "val_accuracy", "val_loss")
    promote_metric = "roc_auc"
    metric_names = ("roc_auc", "pr_auc", "log_loss", "accuracy", "f1", "precision", "recall")

    def output_layer(self, x: Any, num_classes: int, label_scale: tuple[float, float] | None = None) -> Any:
        import tensorflow as tf

        return tf.keras.layers.Dense(1, activation="sigmoid", name="probability")(x)

    def loss(self) -> str:
        return "binary_crossentropy"

    def keras_metrics(self) -> list[Any]:
        import tensorflow as tf

        return [tf.keras.metrics.AUC(name="auc"), tf.keras.metrics.AUC(curve="PR", name="pr_auc"),
                tf.keras.metrics.BinaryAccuracy(name="accuracy")]

    def _target(self, ids: Any) -> Any:
        import tensorflow as tf

        return tf.reshape(tf.cast(ids, tf.float32), (-1, 1))

    def check_classes(self, per_class: dict[int, int], num_classes: int) -> None:
        if sum(1 for k in (0, 1) if per_class.get(k, 0) > 0) < 2:
            raise TrainingInputError("the train split has a single class; nothing to learn")

    def threshold(self, y: np.ndarray, scores: np.ndarray) -> float | None:
        from pipelines.training.evaluate import best_f1_threshold

        return best_f1_threshold(y, scores)[0]

    def metrics(self, y: np.ndarray, scores: np.ndarray, threshold: float | None,
                classes: list[str] | None) -> dict[str, float]:
        from pipelines.training.evaluate import binary_metrics

        return binary_metrics(y, scores, 0.5 if threshold is None else threshold)

    def summary(self, test: dict[str, float]) -> dict[str, str]:
        return {"test_roc_auc": f"{test['roc_auc']:.4f}", "test_pr_auc": f"{test['pr_auc']:.4f}"}

    def parity(self, expected: np.ndarray, out: Any) -> tuple[float, bool]:
        got = np.array([o["probability"] for o in out])
        diff = float(np.max(np.abs(got - expected.reshape(-1)))) if len(got) else float("inf")
        return diff, diff <= 1e-5

    baseline_kinds = ("logreg", "gbt", "rf")

    def baseline(self, data: Any, conf: Any, weights: dict[int, float] | None, seed: int,
                 classes: list[str] | None, kind: str) -> Any:
        from pipelines.training.baseline import train_baseline

        return train_baseline(data, conf, weights, seed, kind)

    def plots(self, out: Path, y: np.ndarray, scores: np.ndarray, threshold: float | None, baselines: list[Any],
              classes: list[str] | None, model: str) -> None:
        from pipelines.training.evaluate import plot_confusion, plot_roc

        t = 0.5 if threshold is None else threshold
        names = ["negative (0)", "positive (1)"]
        plot_confusion(y, (scores >= t).astype(int), names, out / "confusion_matrix_test.png",
                       f"{model}, test split\nthreshold {t:.3f}")
        curves = {model: (y, scores)}
        for b in baselines:
            curves[f"MLlib {b.kind}"] = (b.test_labels, b.test_scores)
        if baselines:
            baseline = baselines[0]
            plot_confusion(baseline.test_labels, (baseline.test_scores >= baseline.threshold).astype(int), names,
                           out / "confusion_matrix_test_baseline.png",
                           f"MLlib {baseline.kind}, test split\nthreshold {baseline.threshold:.3f}")
        plot_roc(curves, out / "roc_curve_test.png", "ROC, test split")

    def _params(self, threshold: float | None) -> Any:
        from mlflow.types.schema import ParamSchema, ParamSpec

        return ParamSchema([ParamSpec("threshold", "double", float(0.5 if threshold is None else threshold))])


class MulticlassHead(_Classifier):
    """Softmax over the classes, sparse categorical cross-entropy; the class with the highest probability."""

    name = "multiclass"
    label_type = "int"
    outputs = (("prediction", "integer"), ("label", "string"), ("probability", "double"))
    monitors = ("val_accuracy", "val_loss")
    promote_metric = "accuracy"
    metric_names = ("accuracy", "macro_f1", "weighted_f1", "log_loss")

    def output_layer(self, x: Any, num_classes: int, label_scale: tuple[float, float] | None = None) -> Any:
        import tensorflow as tf

        return tf.keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)

    def loss(self) -> str:
        return "sparse_categorical_crossentropy"

    def keras_metrics(self) -> list[Any]:
        import tensorflow as tf

        return [tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")]

    def check_classes(self, per_class: dict[int, int], num_classes: int) -> None:
        missing = [k for k in range(num_classes) if per_class.get(k, 0) == 0]
        if missing:
            raise TrainingInputError(f"the train split has no rows of class ids {missing}")

    def scores(self, raw: np.ndarray) -> np.ndarray:
        return raw

    def metrics(self, y: np.ndarray, scores: np.ndarray, threshold: float | None,
                classes: list[str] | None) -> dict[str, float]:
        from pipelines.training.evaluate import multiclass_metrics

        return multiclass_metrics(y, scores, classes or [])

    def summary(self, test: dict[str, float]) -> dict[str, str]:
        return {"test_accuracy": f"{test['accuracy']:.4f}", "test_macro_f1": f"{test['macro_f1']:.4f}"}

    def parity(self, expected: np.ndarray, out: Any) -> tuple[float, bool]:
        ids = np.array([o["prediction"] for o in out])
        got = np.array([o["probability"] for o in out])
        diff = float(np.max(np.abs(got - expected.max(axis=1)))) if len(got) else float("inf")
        return diff, bool(np.array_equal(ids, expected.argmax(axis=1))) and diff <= 1e-5

    def baseline(self, data: Any, conf: Any, weights: dict[int, float] | None, seed: int,
                 classes: list[str] | None, kind: str) -> Any:
        from pipelines.training.baseline import train_multiclass_baseline

        return train_multiclass_baseline(data, conf, weights, seed, classes or [])

    def plots(self, out: Path, y: np.ndarray, scores: np.ndarray, threshold: float | None, baselines: list[Any],
              classes: list[str] | None, model: str) -> None:
        from pipelines.training.evaluate import plot_confusion

        names = classes or []
        plot_confusion(y, scores.argmax(axis=1), names, out / "confusion_matrix_test.png",
                       f"{model}, test split\naccuracy {np.mean(y == scores.argmax(axis=1)):.3f}")
        if baselines:
            baseline = baselines[0]
            pred = baseline.test_scores.argmax(axis=1)
            plot_confusion(baseline.test_labels, pred, names, out / "confusion_matrix_test_baseline.png",
                           f"MLlib logreg, test split\naccuracy {np.mean(baseline.test_labels == pred):.3f}")


class RegressionHead(Head):
    """One linear output, mean squared error; no classes, no weights, no threshold.

    The linear unit predicts the standardized label and a fixed Rescaling layer (the train split's mean and
    standard deviation) turns it into the label's own units, so targets of any scale train at the usual learning
    rates and the saved model outputs values directly."""

    name = "regression"
    label_type = "double"
    outputs = (("prediction", "double"),)
    monitors = ("val_rmse", "val_mae", "val_loss")
    promote_metric = "rmse"
    metric_names = ("rmse", "mae", "r2")
    classified = False

    def output_layer(self, x: Any, num_classes: int, label_scale: tuple[float, float] | None = None) -> Any:
        import tensorflow as tf

        mean, std = label_scale or (0.0, 1.0)
        z = tf.keras.layers.Dense(1, activation="linear", name="standardized")(x)
        return tf.keras.layers.Rescaling(scale=std if std > 0 else 1.0, offset=mean, name="prediction")(z)

    def loss(self) -> str:
        return "mean_squared_error"

    def keras_metrics(self) -> list[Any]:
        import tensorflow as tf

        return [tf.keras.metrics.RootMeanSquaredError(name="rmse"), tf.keras.metrics.MeanAbsoluteError(name="mae")]

    def batch(self, x: Any, label: Any, weights: Any) -> tuple[Any, ...]:
        import tensorflow as tf

        return x, tf.reshape(tf.cast(label, tf.float32), (-1, 1))

    def labels(self, y: Any) -> np.ndarray:
        return np.asarray(y).astype("float64")

    def metrics(self, y: np.ndarray, scores: np.ndarray, threshold: float | None,
                classes: list[str] | None) -> dict[str, float]:
        from pipelines.training.evaluate import regression_metrics

        return regression_metrics(y, scores)

    def summary(self, test: dict[str, float]) -> dict[str, str]:
        return {"test_rmse": f"{test['rmse']:.4f}", "test_r2": f"{test['r2']:.4f}"}

    def parity(self, expected: np.ndarray, out: Any) -> tuple[float, bool]:
        got = np.array([o["prediction"] for o in out], dtype="float64")
        diff = float(np.max(np.abs(got - expected.reshape(-1)))) if len(got) else float("inf")
        scale = max(1.0, float(np.max(np.abs(expected)))) if len(got) else 1.0
        return diff, diff <= 1e-5 * scale  # float32 outputs: relative to the size of the values

    def baseline(self, data: Any, conf: Any, weights: dict[int, float] | None, seed: int,
                 classes: list[str] | None, kind: str) -> Any:
        from pipelines.training.baseline import train_regression_baseline

        return train_regression_baseline(data, conf, seed)

    def plots(self, out: Path, y: np.ndarray, scores: np.ndarray, threshold: float | None, baselines: list[Any],
              classes: list[str] | None, model: str) -> None:
        from pipelines.training.evaluate import plot_regression

        series = {model: (y, scores)}
        for baseline in baselines:
            series[f"MLlib {baseline.kind}"] = (baseline.test_labels, baseline.test_scores)
        plot_regression(series, out / "predicted_vs_actual_test.png", "Predicted vs actual, test split")


HEADS: dict[str, Head] = {h.name: h for h in (BinaryHead(), MulticlassHead(), RegressionHead())}


def get_head(name: str) -> Head:
    """The head called `name`; an unknown name is an error listing the known ones."""
    try:
        return HEADS[name]
    except KeyError:
        raise ValueError(f"unknown head {name!r}; known: {sorted(HEADS)}") from None
