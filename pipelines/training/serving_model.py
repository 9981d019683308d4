"""The scoring model as MLflow logs it (models-from-code: this file is copied into the model and run at load).

Input: a DataFrame with column `features` (float arrays of the training vector size, i.e. the output of the
features job's preprocessing PipelineModel). Output: `probability` (double, P(delayed)) and `prediction`
(int, probability >= threshold). The threshold was chosen on the validation split (max F1); the `threshold`
param overrides it per call. Self-contained on purpose: only numpy, pandas, TensorFlow and MLflow.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class FlightDelayModel(PythonModel):
    """Keras network + decision threshold; artifacts: keras_model (.keras), meta (json), preprocessing."""

    def load_context(self, context: Any) -> None:
        import tensorflow as tf

        self.model = tf.keras.models.load_model(context.artifacts["keras_model"], compile=False)
        with open(context.artifacts["meta"]) as f:
            meta = json.load(f)
        self.threshold = float(meta["threshold"])
        self.vector_size = int(meta["vector_size"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        column = model_input["features"]
        if len(column) == 0:
            return pd.DataFrame({"probability": pd.Series(dtype="float64"), "prediction": pd.Series(dtype="int32")})
        x = np.stack([np.asarray(v, dtype=np.float32) for v in column])
        if x.ndim != 2 or x.shape[1] != self.vector_size:
            raise ValueError(f"features: expected arrays of length {self.vector_size}, got shape {x.shape}")
        p = self.model.predict(x, batch_size=4096, verbose=0).reshape(-1).astype("float64")
        threshold = float((params or {}).get("threshold", self.threshold))
        return pd.DataFrame({"probability": p, "prediction": (p >= threshold).astype("int32")})


set_model(FlightDelayModel())
