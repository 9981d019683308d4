"""The scoring model as MLflow logs it (models-from-code: this file is copied into the model and run at load).

One PythonModel for every head and input, configured by the input description in the model's meta.json
(`input_column`, `vector_size`, `input_shape`, `decode`):
  - without `decode`: column `input_column` (`features`), float arrays of the training vector size (the output of
    the features run's preprocessing PipelineModel, shipped inside the model);
  - with `decode`: column `input_column` (`content`) with encoded image bytes (PNG, JPEG, ...). The model decodes,
    resizes and normalizes them itself with features.image.decode_image (shipped in the model's code/) and the
    `decode` settings, the function the features job used, so serving sees the training pixels and callers pass
    bytes, never file paths. Bytes that do not decode as an image score as a marked row (prediction -1 or NaN,
    probability NaN, label null): one bad row never fails a batch.
The network reads `input_shape` per row (a CNN's height, width, channels), or a flat vector of `vector_size`.
Output by `head`:
  - "binary": `probability` (double, P(label = 1)) and `prediction` (int, probability >= threshold). The threshold
    was chosen on the validation split (max F1); the `threshold` param overrides it per call;
  - "multiclass": `prediction` (int class id), `label` (the class name of `classes`) and `probability` (of it);
  - "regression": `prediction` (double, the predicted value).
Self-contained on purpose: only numpy, pandas, MLflow and the framework, TensorFlow or PyTorch (with the
network builder torch_net.py the PyTorch model ships in its code/), and features.image for images.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

VECTOR_BATCH, DECODED_BATCH = 16384, 1024  # rows per call of the compiled network (bounds its memory)


_CACHE = "_spark_ml_pipeline_serving"  # a module in sys.modules: lives as long as the (Spark Python worker) process


def _network(path: str, shape: list[int], framework: str = "tensorflow") -> tuple[Any, Any]:
    """The network at `path` and its forward pass over any number of rows (numpy in, array out), loaded once per
    process: a PyTorch model (framework pytorch: torch_net.TorchModel, shipped in the model's code/) in inference
    mode, or a Keras model traced once (callers keep no reference: the cache is emptied at exit, before TensorFlow's
    teardown, which otherwise prints an error for every function still alive).

    Keras' predict() builds a data pipeline on every call (~6 us a row on a 10,000-row batch against ~0.5 us for
    the compiled call), and spark_udf calls the pyfunc once per Arrow batch; spark_udf (env_manager local) also
    loads the model once per task, so the network is kept per process, keyed by the file and its size and time.
    """
    import atexit
    import sys
    import types

    cache = sys.modules.get(_CACHE)
    if cache is None:
        cache = sys.modules[_CACHE] = types.ModuleType(_CACHE)
        cache.networks = {}  # type: ignore[attr-defined]
        atexit.register(cache.networks.clear)  # free the functions before TensorFlow's own teardown
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, tuple(shape))
    networks = cache.networks  # type: ignore[attr-defined]
    if key not in networks:
        networks[key] = _load_torch(path) if framework == "pytorch" else _load_keras(path, shape)
    return networks[key]


def _load_torch(path: str) -> tuple[Any, Any]:
    """The PyTorch network (torch_net.TorchModel, from the model's code/) and its forward pass in one call."""
    from spark_ml_pipeline_serving.torch_net import TorchModel

    net = TorchModel.load(path)
    return net, lambda x: net.predict(x, batch_size=len(x) or 1)


def _load_keras(path: str, shape: list[int]) -> tuple[Any, Any]:
    """The Keras network and its forward pass traced once for any number of rows."""
    import tensorflow as tf

    model = tf.keras.models.load_model(path, compile=False)
    spec = tf.TensorSpec((None, *shape), tf.float32)
    return model, tf.function(lambda x: model(x, training=False), input_signature=[spec])


class ServingModel(PythonModel):
    """The network + what meta.json says about its input and output; artifacts: keras_model (.keras) or
    torch_model (meta.json's framework pytorch: network.json + state.pt), meta (json), preprocessing (features
    input)."""

    def load_context(self, context: Any) -> None:
        with open(context.artifacts["meta"]) as f:
            self.meta = json.load(f)
        self.head = self.meta.get("head", "binary")
        self.column = self.meta.get("input_column", "features")
        self.decode = self.meta.get("decode")
        self.classes = list(self.meta.get("classes") or [])
        self.threshold = float(self.meta["threshold"]) if self.meta.get("threshold") is not None else 0.5
        self.vector_size = int(self.meta["vector_size"])
        self.shape = list(self.meta.get("input_shape") or [self.vector_size])
        self.framework = self.meta.get("framework", "tensorflow")
        artifact = "torch_model" if self.framework == "pytorch" else "keras_model"
        self._network = (context.artifacts[artifact], self.shape, self.framework)

    @property
    def model(self) -> Any:
        """The network (Keras model, or torch_net.TorchModel)."""
        return _network(*self._network)[0]

    def _predict(self, x: np.ndarray) -> np.ndarray:
        """The network's outputs for `x`, in chunks of VECTOR_BATCH (or DECODED_BATCH images) rows."""
        step = DECODED_BATCH if self.decode else VECTOR_BATCH
        x = np.asarray(x, dtype=np.float32)
        forward = _network(*self._network)[1]
        return np.concatenate([np.asarray(forward(x[i:i + step])) for i in range(0, len(x), step)])

    def _inputs(self, model_input: pd.DataFrame | dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(model inputs, per-row validity); undecodable images get zeros and validity False. Feature vectors come
        as MLflow's tensor input, one float32 matrix (a dict of it by name); a plain DataFrame of arrays also works."""
        if self.decode:
            from features.image import decode_image

            d = self.decode
            shape = (d["height"], d["width"], d["channels"])
            images, ok = [], []
            for b in model_input[self.column]:
                try:
                    images.append(decode_image(bytes(b), d["height"], d["width"], d["channels"], d["resample"],
                                               d["normalize"]))
                    ok.append(True)
                except Exception:  # not an image: a row marked invalid, never a failed batch
                    images.append(np.zeros(shape, dtype=np.float32))
                    ok.append(False)
            return np.stack(images).reshape((-1, *self.shape)), np.array(ok)
        x = model_input[self.column]
        x = x if isinstance(x, np.ndarray) else np.stack([np.asarray(v, dtype=np.float32) for v in x])
        if x.ndim != 2 or x.shape[1] != self.vector_size:
            raise ValueError(f"features: expected arrays of length {self.vector_size}, got shape {x.shape}")
        return x.reshape((-1, *self.shape)), np.ones(len(x), dtype=bool)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """The head's output columns for `model_input`. MLflow reads the hint of `model_input`: pd.DataFrame is one
        it takes without inferring a schema from it (the signature is logged explicitly); any other hint makes it
        warn on every load. Feature vectors arrive as MLflow's tensor input, a dict of one matrix by name."""
        if len(next(iter(model_input.values())) if isinstance(model_input, dict) else model_input) == 0:
            return self._empty()
        x, ok = self._inputs(model_input)
        p = self._predict(x)
        if self.head == "multiclass":
            ids = np.where(ok, p.argmax(axis=1), -1)
            return pd.DataFrame({"prediction": ids.astype("int32"),
                                 "label": [self.classes[i] if i >= 0 else None for i in ids],
                                 "probability": np.where(ok, p.max(axis=1), np.nan).astype("float64")})
        values = np.where(ok, p.reshape(-1), np.nan).astype("float64")
        if self.head == "regression":
            return pd.DataFrame({"prediction": values})
        threshold = float((params or {}).get("threshold", self.threshold))
        return pd.DataFrame({"probability": values,
                             "prediction": np.where(ok, values >= threshold, -1).astype("int32")})

    def _empty(self) -> pd.DataFrame:
        if self.head == "multiclass":
            return pd.DataFrame({"prediction": pd.Series(dtype="int32"), "label": pd.Series(dtype="object"),
                                 "probability": pd.Series(dtype="float64")})
        if self.head == "regression":
            return pd.DataFrame({"prediction": pd.Series(dtype="float64")})
        return pd.DataFrame({"probability": pd.Series(dtype="float64"), "prediction": pd.Series(dtype="int32")})


set_model(ServingModel())
