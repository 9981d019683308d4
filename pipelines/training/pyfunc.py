"""Logging the scoring model (serving_model.py) to MLflow, and the helpers scoring uses to call it.

Interface for scoring:
  - model: `models:/<mlflow.registered_model>@champion` (or @challenger, or a version);
  - preprocessing: `load_preprocessing(model_uri)` -> the features run's fitted PipelineModel, shipped inside
    the model (artifacts/preprocessing); apply it, turn its vector into `features` (array<float>);
  - `spark_udf(spark, model_uri)` -> UDF over column `features` returning struct<probability double,
    prediction int> (RESULT_TYPE); the threshold is inside the model (`model_meta(model_uri)["threshold"]`).
The image and text flows log serving_classifier.py instead (`log_classifier`): content bytes or `features` in,
struct<prediction int, label string, probability double> out (CLASSIFIER_RESULT_TYPE).
"""

from __future__ import annotations

import json
import pkgutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import mlflow
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

from pipelines.core import files

MODEL_NAME = "model"  # artifact name of the pyfunc in the train run
INPUT_COL = "features"
RESULT_TYPE = "probability double, prediction int"
SERVING_MODULE = "serving_model.py"  # in this package; read with pkgutil, so it also works from a code zip
CLASSIFIER_MODULE = "serving_classifier.py"  # image and text flows
CLASSIFIER_RESULT_TYPE = "prediction int, label string, probability double"


def signature(threshold: float) -> ModelSignature:
    """features: numeric array in; probability double, prediction int out; threshold param (default stored).

    The input is declared as doubles: Spark's array<float> widens to it safely, and JSON requests to the model
    server (whose numbers parse as float64) pass the signature check, which refuses float64 -> float32.
    """
    return ModelSignature(
        inputs=Schema([ColSpec(Array("double"), INPUT_COL)]),
        outputs=Schema([ColSpec("double", "probability"), ColSpec("integer", "prediction")]),
        params=ParamSchema([ParamSpec("threshold", "double", float(threshold))]),
    )


def log_model(keras_model: Any, meta: dict[str, Any], preprocessing_dir: str | None) -> Any:
    """Log the pyfunc (Keras model, meta.json with the threshold, preprocessing PipelineModel) in the active run."""
    with tempfile.TemporaryDirectory(prefix="pyfunc-") as tmp:
        artifacts = _artifacts(tmp, keras_model, meta, preprocessing_dir)
        return mlflow.pyfunc.log_model(
            name=MODEL_NAME, python_model=serving_code(tmp), artifacts=artifacts,
            signature=signature(meta["threshold"]), pip_requirements=_requirements(),
        )


def _artifacts(folder: str, keras_model: Any, meta: dict[str, Any], preprocessing_dir: str | None) -> dict[str, str]:
    """The pyfunc's artifacts written to `folder`: the Keras model, meta.json, and the preprocessing model."""
    keras_path = Path(folder) / "model.keras"
    keras_model.save(keras_path)
    meta_path = Path(folder) / "meta.json"
    meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True))
    artifacts = {"keras_model": str(keras_path), "meta": str(meta_path)}
    if preprocessing_dir:
        artifacts["preprocessing"] = preprocessing_dir
    return artifacts


def serving_code(folder: str, module: str = SERVING_MODULE, package: str | None = None) -> str:
    """A module of this package (or `package`) copied to `folder` (MLflow models-from-code needs a real file;
    the package may be zipped)."""
    source = pkgutil.get_data(package or __package__ or "pipelines.training", module)
    if source is None:
        raise FileNotFoundError(f"{module} not found in {package or __package__}")
    path = Path(folder) / module
    path.write_bytes(source)
    return str(path)


def classifier_signature(image: bool) -> ModelSignature:
    """content (binary) or features (double array) in; prediction, label, probability out."""
    column = ColSpec("binary", "content") if image else ColSpec(Array("double"), INPUT_COL)
    return ModelSignature(inputs=Schema([column]),
                          outputs=Schema([ColSpec("integer", "prediction"), ColSpec("string", "label"),
                                          ColSpec("double", "probability")]))


def log_classifier(keras_model: Any, meta: dict[str, Any], preprocessing_dir: str | None) -> Any:
    """Log an image or text classifier pyfunc (serving_classifier.py) in the active run. Image models carry
    features/image.py in their code/ so they decode bytes exactly as the features job did."""
    with tempfile.TemporaryDirectory(prefix="pyfunc-") as tmp:
        artifacts = _artifacts(tmp, keras_model, meta, preprocessing_dir)
        code_paths = None
        if meta["input"] == "image":
            package = Path(tmp) / "code" / "features"
            package.mkdir(parents=True)
            (package / "__init__.py").write_text("")
            serving_code(str(package), "image.py", "features")
            code_paths = [str(package)]
        return mlflow.pyfunc.log_model(
            name=MODEL_NAME, python_model=serving_code(tmp, CLASSIFIER_MODULE), artifacts=artifacts,
            code_paths=code_paths, signature=classifier_signature(meta["input"] == "image"),
            pip_requirements=[*_requirements(), *(["pillow"] if meta["input"] == "image" else [])],
        )


def _requirements() -> list[str]:
    import mlflow as m
    import numpy
    import pandas
    import tensorflow as tf

    return [f"mlflow=={m.__version__}", f"tensorflow-cpu=={tf.__version__}", f"numpy=={numpy.__version__}",
            f"pandas=={pandas.__version__}"]


def spark_udf(spark: Any, model_uri: str) -> Any:
    """The model as a Spark UDF over `features` with the explicit struct result type."""
    return mlflow.pyfunc.spark_udf(spark, model_uri, result_type=RESULT_TYPE, env_manager="local")


def _download(model_uri: str) -> Path:
    return Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=tempfile.mkdtemp(prefix="model-")))


def model_meta(model_uri: str) -> dict[str, Any]:
    """meta.json of a logged model: threshold, vector_size, features run, table version, test metrics."""
    return json.loads((_download(model_uri) / "artifacts" / "meta.json").read_text())


def preprocessing_path(model_uri: str, workspace: str | None = None) -> str:
    """URI of the preprocessing PipelineModel shipped inside the model, where Spark's executors can read it.

    PipelineModel.load reads through Spark, so a plain local path would resolve against the cluster's default file
    system and the executors of another node could not see the driver's disk: with a workspace on a cluster file
    system the folder is copied to <workspace>/cache/models/ first; otherwise it is a file:// URI.
    """
    path = _download(model_uri) / "artifacts" / "preprocessing"
    if not path.is_dir():
        raise FileNotFoundError(f"{model_uri} carries no preprocessing model")
    if not workspace or "://" not in workspace or workspace.startswith("file:"):
        return path.as_uri()
    target = files.join(workspace, "cache", "models", uuid.uuid4().hex, "preprocessing")
    fs, remote = files.filesystem(target)
    fs.put(str(path), remote, recursive=True)
    return target


def load_preprocessing(model_uri: str, workspace: str | None = None) -> Any:
    """The fitted preprocessing PipelineModel that produced the training features, from inside the model."""
    from pyspark.ml import PipelineModel

    return PipelineModel.load(preprocessing_path(model_uri, workspace))
