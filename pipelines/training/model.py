"""The Keras network built from `training.network` with the output layer of its head (heads.py), and the
optimizer from `training.optimizer`.

Used by the workers (training), the driver (the final model from rank 0's weights) and the benchmarks, so all
three build the identical architecture. TensorFlow is imported inside the functions: the driver imports this
module without paying for TensorFlow until it needs it.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

LEGACY_OPTIMIZERS = {"adam": "Adam", "sgd": "SGD"}


def build_network(network: dict[str, Any], vector_size: int, head: str = "binary", num_classes: int = 2,
                  input_shape: list[int] | tuple[int, ...] | None = None,
                  label_scale: tuple[float, float] | None = None) -> Any:
    """The network body of `network` topped by the output layer of `head` (binary: P(label = 1), shape (batch, 1);
    multiclass: softmax over `num_classes`; regression: one value, in the label's units given `label_scale` =
    (mean, std) of the train labels). kind mlp reads a float vector of `vector_size`; kind cnn reads images of
    `input_shape` (height, width, channels).
    """
    import tensorflow as tf

    from pipelines.training.heads import get_head

    out = get_head(head)
    if network["kind"] == "cnn":
        if not input_shape or len(input_shape) != 3:
            raise ValueError("training.network.kind cnn needs image features (height, width, channels); this "
                             "feature table has none: use kind mlp")
        x, inputs = _cnn(network["cnn"], tuple(input_shape))
        return tf.keras.Model(inputs, out.output_layer(x, num_classes, label_scale), name="cnn")
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
    return tf.keras.Model(inputs, out.output_layer(x, num_classes, label_scale), name="mlp")


def _cnn(cnn: dict[str, Any], shape: tuple[int, ...]) -> tuple[Any, Any]:
    """Conv2D (same padding) + ReLU + 2x2 max-pool per block while the image is at least 2x2, then dense; returns
    (the last hidden layer, the input)."""
    import tensorflow as tf

    inputs = tf.keras.Input(shape=shape, name="image")
    x = inputs
    for i, filters in enumerate(cnn["filters"]):
        x = tf.keras.layers.Conv2D(filters, cnn["kernel_size"], padding="same", activation="relu",
                                   name=f"conv_{i}")(x)
        if x.shape[1] >= 2 and x.shape[2] >= 2:
            x = tf.keras.layers.MaxPooling2D(2, name=f"pool_{i}")(x)
    x = tf.keras.layers.Flatten(name="flatten")(x)
    x = tf.keras.layers.Dense(cnn["dense_units"], activation="relu", name="dense")(x)
    if cnn["dropout"] > 0:
        x = tf.keras.layers.Dropout(cnn["dropout"], name="dropout")(x)
    return x, inputs


def make_optimizer(optimizer: dict[str, Any], learning_rate: float) -> Any:
    """A Keras legacy optimizer (the kind Horovod's DistributedOptimizer and warm-up callbacks drive)."""
    import tensorflow as tf

    cls = getattr(tf.keras.optimizers.legacy, LEGACY_OPTIMIZERS[optimizer["name"]])
    if optimizer["name"] == "sgd":
        return cls(learning_rate=learning_rate, momentum=optimizer["momentum"])
    return cls(learning_rate=learning_rate)


def weights_checksum(weights: list[np.ndarray]) -> str:
    """SHA-256 over the exact bytes of all weights: equal only when the models are bit-identical."""
    h = hashlib.sha256()
    for w in weights:
        a = np.ascontiguousarray(w)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()
