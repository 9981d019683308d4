"""The image and text flows' scoring model as MLflow logs it (models-from-code: copied into the model, run at load).

Input, by `meta["input"]`:
  - "image": column `content` with the encoded image bytes (PNG, JPEG, ...). The model decodes, resizes and
    normalizes them itself with features.image.decode_image (shipped in the model's code/), the function the
    features job used, so serving sees the training pixels and callers pass bytes, never file paths.
  - "features": column `features`, float arrays of the training vector size (the text preprocessing output).
Output: `prediction` (int class id), `label` (the class name) and `probability` (of that class). Bytes that do
not decode as an image score as prediction -1, label null, probability NaN: one bad row never fails a batch.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class ClassifierModel(PythonModel):
    """Keras classifier + class names (+ image decoding); artifacts: keras_model (.keras), meta (json)."""

    def load_context(self, context: Any) -> None:
        import tensorflow as tf

        self.model = tf.keras.models.load_model(context.artifacts["keras_model"], compile=False)
        with open(context.artifacts["meta"]) as f:
            self.meta = json.load(f)
        self.classes = list(self.meta["classes"])

    def _inputs(self, model_input: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(model inputs, per-row validity); undecodable images get zeros and validity False."""
        m = self.meta
        if m["input"] == "image":
            from features.image import decode_image

            d = m["decode"]
            shape = (d["height"], d["width"], d["channels"])
            images, ok = [], []
            for b in model_input["content"]:
                try:
                    images.append(decode_image(bytes(b), d["height"], d["width"], d["channels"], d["resample"],
                                               d["normalize"]))
                    ok.append(True)
                except Exception:  # not an image: a row marked invalid, never a failed batch
                    images.append(np.zeros(shape, dtype=np.float32))
                    ok.append(False)
            return np.stack(images), np.array(ok)
        x = np.stack([np.asarray(v, dtype=np.float32) for v in model_input["features"]])
        if x.ndim != 2 or x.shape[1] != int(m["vector_size"]):
            raise ValueError(f"features: expected arrays of length {m['vector_size']}, got shape {x.shape}")
        return x, np.ones(len(x), dtype=bool)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        if len(model_input) == 0:
            return pd.DataFrame({"prediction": pd.Series(dtype="int32"), "label": pd.Series(dtype="object"),
                                 "probability": pd.Series(dtype="float64")})
        x, ok = self._inputs(model_input)
        p = self.model.predict(x, batch_size=1024, verbose=0)
        if p.shape[1] == 1:  # two classes: sigmoid output is P(class 1)
            p = np.hstack([1.0 - p, p])
        ids = np.where(ok, p.argmax(axis=1), -1)
        return pd.DataFrame({"prediction": ids.astype("int32"),
                             "label": [self.classes[i] if i >= 0 else None for i in ids],
                             "probability": np.where(ok, p.max(axis=1), np.nan).astype("float64")})


set_model(ClassifierModel())
