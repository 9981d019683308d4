"""The Keras network built from `training.network`, and the optimizer from `training.optimizer`.

Used by the workers (training), the driver (the final model from rank 0's weights) and the benchmarks, so all
three build the identical architecture. TensorFlow is imported inside the functions: the driver imports this
module without paying for TensorFlow until it needs it.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

LEGACY_OPTIMIZERS = {"adam": "Adam", "sgd": "SGD"}


def build_network(network: dict[str, Any], vector_size: int) -> Any:
    """A binary classifier over a float vector of `vector_size`; output: P(label = 1), shape (batch, 1)."""
    import tensorflow as tf

    if network["kind"] != "mlp":
        raise ValueError(f"training.network.kind {network['kind']!r} has no builder")
    mlp = network["mlp"]
    inputs = tf.keras.Input(shape=(vector_size,), name="features")
    x = inputs
    for i, units in enumerate(mlp["hidden_units"]):
        x = tf.keras.layers.Dense(units, name=f"dense_{i}")(x)
        if mlp["batch_norm"]:
            x = tf.keras.layers.BatchNormalization(name=f"bn_{i}")(x)
        x = tf.keras.layers.Activation(mlp["activation"], name=f"act_{i}")(x)
        if mlp["dropout"] > 0:
            x = tf.keras.layers.Dropout(mlp["dropout"], name=f"dropout_{i}")(x)
    outputs = tf.keras.layers.Dense(1, activation="sigmoid", name="probability")(x)
    return tf.keras.Model(inputs, outputs, name="flight_delay_mlp")


def make_optimizer(optimizer: dict[str, Any], learning_rate: float) -> Any:
    """A Keras legacy optimizer (the kind Horovod's DistributedOptimizer and warm-up callbacks drive)."""
    import tensorflow as tf

    cls = getattr(tf.keras.optimizers.legacy, LEGACY_OPTIMIZERS[optimizer["name"]])
    if optimizer["name"] == "sgd":
        return cls(learning_rate=learning_rate, momentum=optimizer["momentum"])
    return cls(learning_rate=learning_rate)


def metrics() -> list[Any]:
    """Training metrics; their names (auc, pr_auc, accuracy) are what early stopping and MLflow see."""
    import tensorflow as tf

    return [tf.keras.metrics.AUC(name="auc"), tf.keras.metrics.AUC(curve="PR", name="pr_auc"),
            tf.keras.metrics.BinaryAccuracy(name="accuracy")]


def weights_checksum(weights: list[np.ndarray]) -> str:
    """SHA-256 over the exact bytes of all weights: equal only when the models are bit-identical."""
    h = hashlib.sha256()
    for w in weights:
        a = np.ascontiguousarray(w)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()
