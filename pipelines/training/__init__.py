"""Distributed training of the pipeline's Keras (or PyTorch, training.framework) model, behind a small public API
(the names in `__all__`, imported on first use so that `import pipelines.training.spec` needs neither Spark nor
Horovod nor TensorFlow):

  inputs     resolve_task, load_training_data -> Task, TrainingData: what one training reads;
             TrainingInputError when the features run or table cannot be trained on; checkpoint_root, class_weights;
  launch     Launch (what the workers build and train), fit / fit_on (one barrier stage of N workers),
             petastorm_caches (the data the workers read, shareable among launches);
  predict    trained_model, evaluate_model, validation_metric, check_pyfunc: driver-side evaluation;
  report     rank_baselines, comparison: the Keras model against the MLlib baselines;
  trainer    train_with -> TrainResult: one train run (fit, evaluate, pyfunc, baselines, registry);
  search     hyperparameter_search -> SearchResult: Optuna trials, then train_with on the best configuration.

The train job's stage (pipelines/stages/train.py) calls these. Inside: heads.py holds what differs between binary,
multiclass and regression models; driver.py launches N workers as one Spark barrier stage; remote/ is what runs in
the barrier tasks (task.py) and the training processes they start (worker.py, backends.py); spec.py is the contract
between the sides; serving.py is the logged scoring model (pyfunc.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.training.heads import TrainingInputError
    from pipelines.training.inputs import (
        Task,
        TrainingData,
        checkpoint_root,
        class_weights,
        load_training_data,
        resolve_source,
        resolve_task,
    )
    from pipelines.training.launch import Launch, fit, fit_on, petastorm_caches
    from pipelines.training.predict import Evaluation, check_pyfunc, evaluate_model, trained_model, validation_metric
    from pipelines.training.report import comparison, rank_baselines
    from pipelines.training.search import SearchResult, hyperparameter_search
    from pipelines.training.trainer import TrainResult, train_with

_HOMES = {
    "TrainingInputError": "heads",
    **dict.fromkeys(("Task", "TrainingData", "checkpoint_root", "class_weights", "load_training_data",
                     "resolve_source", "resolve_task"), "inputs"),
    **dict.fromkeys(("Launch", "fit", "fit_on", "petastorm_caches"), "launch"),
    **dict.fromkeys(("Evaluation", "check_pyfunc", "evaluate_model", "trained_model", "validation_metric"), "predict"),
    **dict.fromkeys(("comparison", "rank_baselines"), "report"),
    **dict.fromkeys(("SearchResult", "hyperparameter_search"), "search"),
    **dict.fromkeys(("TrainResult", "train_with"), "trainer"),
}
__all__ = [
    "Evaluation", "Launch", "SearchResult", "Task", "TrainResult", "TrainingData", "TrainingInputError",
    "check_pyfunc", "checkpoint_root", "class_weights", "comparison", "evaluate_model", "fit", "fit_on",
    "hyperparameter_search", "load_training_data", "petastorm_caches", "rank_baselines", "resolve_source",
    "resolve_task", "train_with", "trained_model", "validation_metric",
]


def __getattr__(name: str) -> Any:
    """The public name from its module, imported on first use."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
