"""Logging the scoring model (serving.py) to MLflow, and the helpers scoring uses to call it.

Interface for scoring:
  - model: `models:/<mlflow.registered_model>@champion` (or @challenger, or a version);
  - preprocessing (features input): `load_preprocessing(model_uri)` -> the features run's fitted PipelineModel,
    shipped inside the model (artifacts/preprocessing); apply it, turn its vector into `features` (array<float>);
  - `spark_udf(spark, model_uri, result_type)` -> UDF over the model's input column returning its head's struct:
    binary `probability double, prediction int` (RESULT_TYPE; the threshold is inside the model,
    `model_meta(model_uri)["threshold"]`), multiclass `prediction int, label string, probability double`
    (CLASSIFIER_RESULT_TYPE), regression `prediction double` (REGRESSION_RESULT_TYPE). A model whose input
    description has a `decode` spec (the image flow's) takes the encoded bytes in column `content`
    (ENCODED_INPUT_COL) instead of `features`.

What the model reads is described in its meta.json (`input_description`), from the flow's serving meta and the
trained network's input shape; the pyfunc and the served model decide from that description, never from the flow.
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

from pipelines.core import files
from pipelines.training.heads import HEADS, get_head

MODEL_NAME = "model"  # artifact name of the pyfunc in the train run
INPUT_COL = "features"
ENCODED_INPUT_COL = "content"
SERVING_MODULE = "serving.py"  # in this package; read with pkgutil, so it also works from a code zip
RESULT_TYPE = HEADS["binary"].result_type
CLASSIFIER_RESULT_TYPE = HEADS["multiclass"].result_type
REGRESSION_RESULT_TYPE = HEADS["regression"].result_type


def input_description(serving_meta: dict[str, Any], vector_size: int, input_shape: tuple[int, ...] | None
                      ) -> dict[str, Any]:
    """What the served model reads, for its meta.json: the flow's serving meta (a `decode` spec when the model
    decodes encoded bytes itself; `input`, the kind of input a scoring flow checks for, "features" unless the flow
    says otherwise) over the defaults, the column it reads, the stored vectors' length, and the network's input
    shape (None: a flat vector of `vector_size`)."""
    description = {"input": "features", "vector_size": vector_size,
                   "input_shape": list(input_shape) if input_shape else None, **serving_meta}
    description["input_column"] = ENCODED_INPUT_COL if decodes(description) else INPUT_COL
    return description


def decodes(meta: dict[str, Any]) -> bool:
    """Whether the model decodes encoded bytes itself (its description has a `decode` spec)."""
    return meta.get("decode") is not None


def ships_preprocessing(meta: dict[str, Any]) -> bool:
    """Whether the model ships the features run's preprocessing: a model reading feature arrays does (scoring
    applies it first); one that decodes its input itself needs none."""
    return not decodes(meta)


def signature(meta: dict[str, Any]) -> ModelSignature:
    """The signature of the model meta.json describes: its input column in, its head's columns out (and the
    binary head's threshold param, default stored)."""
    return get_head(meta["head"]).signature(meta["input_column"], decodes(meta), meta.get("threshold"),
                                            int(meta["vector_size"]))


TORCH_CODE_PACKAGE = "spark_ml_pipeline_serving"  # a PyTorch model's code/: torch_net.py, its network builder


def log_model(model: Any, meta: dict[str, Any], preprocessing_dir: str | None) -> Any:
    """Log the pyfunc (the network, meta.json, preprocessing PipelineModel for features input) in the active run.
    `model` is a Keras model, or a torch_net.TorchModel when meta["framework"] is pytorch; the PyTorch model
    carries torch_net.py in its code/ (serving rebuilds the network from it). A model that decodes bytes carries
    features/image.py in its code/, so it decodes them exactly as the features job did."""
    decoder = decodes(meta)
    torch = meta.get("framework") == "pytorch"
    with tempfile.TemporaryDirectory(prefix="pyfunc-") as tmp:
        artifacts = _artifacts(tmp, model, meta, preprocessing_dir)
        code_paths = []
        if decoder:
            code_paths.append(_code_package(tmp, "features", "image.py", "features"))
        if torch:
            code_paths.append(_code_package(tmp, TORCH_CODE_PACKAGE, "torch_net.py"))
        return mlflow.pyfunc.log_model(
            name=MODEL_NAME, python_model=serving_code(tmp), artifacts=artifacts, code_paths=code_paths or None,
            signature=signature(meta),
            pip_requirements=[*_requirements(meta.get("framework", "tensorflow")), *(["pillow"] if decoder else [])],
        )


def _code_package(folder: str, name: str, module: str, package: str | None = None) -> str:
    """A package `name` under <folder>/code holding `module` of this package (or `package`), for code_paths."""
    path = Path(folder) / "code" / name
    path.mkdir(parents=True, exist_ok=True)
    (path / "__init__.py").write_text("")
    serving_code(str(path), module, package)
    return str(path)


def _artifacts(folder: str, model: Any, meta: dict[str, Any], preprocessing_dir: str | None) -> dict[str, str]:
    """The pyfunc's artifacts written to `folder`: the network (keras_model, a .keras file, or torch_model, a
    folder of network.json and state.pt), meta.json, and the preprocessing model."""
    key, name = ("torch_model", "torch_model") if meta.get("framework") == "pytorch" else ("keras_model",
                                                                                            "model.keras")
    model.save(str(Path(folder) / name))
    meta_path = Path(folder) / "meta.json"
    meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True))
    artifacts = {key: str(Path(folder) / name), "meta": str(meta_path)}
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


def _requirements(framework: str) -> list[str]:
    """What the served model needs: MLflow, numpy, pandas and its framework (torch without its local build tag,
    so the requirement resolves on PyPI)."""
    import mlflow as m
    import numpy
    import pandas

    if framework == "pytorch":
        import torch

        net = f"torch=={torch.__version__.split('+')[0]}"
    else:
        import tensorflow as tf

        net = f"tensorflow-cpu=={tf.__version__}"
    return [f"mlflow=={m.__version__}", net, f"numpy=={numpy.__version__}", f"pandas=={pandas.__version__}"]


def spark_udf(spark: Any, model_uri: str, result_type: str = RESULT_TYPE) -> Any:
    """The model as a Spark UDF over its input column with the explicit struct result type (binary by default)."""
    return mlflow.pyfunc.spark_udf(spark, model_uri, result_type=result_type, env_manager="local")


def _download(model_uri: str) -> Path:
    return Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=tempfile.mkdtemp(prefix="model-")))


def model_meta(model_uri: str) -> dict[str, Any]:
    """meta.json of a logged model: head, input, threshold or classes, vector_size, features run, table version,
    metrics."""
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
