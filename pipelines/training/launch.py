"""The launch API: one distributed training of N workers in a Spark barrier stage, described by a `Launch` (what
the workers build and train, and where rank 0 keeps checkpoints) and the TrainingConf (how many workers, which
backend, the optimizer and schedule). The train run and every search trial launch through here."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.core.config import Config, TrainingConf
from pipelines.core.files import to_uri
from pipelines.core.logs import LOG
from pipelines.training.data import ParquetCache
from pipelines.training.driver import make_launcher, steps_per_epoch
from pipelines.training.inputs import Task, TrainingData
from pipelines.training.spec import WorkerResult, WorkerSpec

Caches = tuple[Any, Any]  # (train, validation) Petastorm caches: pipelines.training.data.ParquetCache


@dataclass(frozen=True)
class Launch:
    """One training's model and schedule: the network's input and head (binary, multiclass with `num_classes`,
    regression with `label_scale`), the steps per epoch, class weights, and rank 0's checkpoint folder (and the
    one it resumes from). With the TrainingConf and the data caches it becomes every rank's WorkerSpec."""

    vector_size: int
    steps_per_epoch: int
    validation_steps: int
    checkpoint_dir: str
    resume_from: str | None = None
    class_weight: dict[int, float] | None = None
    head: str = "binary"
    num_classes: int = 2
    input_shape: tuple[int, ...] | None = None  # images: the workers reshape the flat rows to it
    label_scale: tuple[float, float] | None = None

    @classmethod
    def of(cls, tc: TrainingConf, task: Task, data: TrainingData, weights: dict[int, float] | None,
           checkpoint_dir: str, resume_from: str | None = None) -> Launch:
        """The launch of `task` on `data` under `tc`: steps per epoch from the train and validation row counts."""
        rows = data.counts
        return cls(task.record.vector_size,
                   steps_per_epoch(rows["train"]["rows"], tc.batch_size, tc.num_workers, tc.max_steps_per_epoch),
                   steps_per_epoch(rows["validation"]["rows"], tc.batch_size, tc.num_workers,
                                   tc.max_steps_per_epoch),
                   checkpoint_dir, resume_from, weights, task.head.name, task.num_classes, task.input_shape,
                   data.label_scale)

    def spec(self, tc: TrainingConf, caches: Caches) -> WorkerSpec:
        """What every rank is given (the launcher fills in the control channel and the secret)."""
        return WorkerSpec(backend=tc.backend, training=tc.model_dump(mode="json"), vector_size=self.vector_size,
                          steps_per_epoch=self.steps_per_epoch, validation_steps=self.validation_steps,
                          class_weight=self.class_weight, train_data=caches[0], val_data=caches[1],
                          checkpoint_dir=self.checkpoint_dir, resume_from=self.resume_from, head=self.head,
                          num_classes=self.num_classes, input_shape=self.input_shape, label_scale=self.label_scale)


@contextmanager
def petastorm_caches(cfg: Config, data: DataFrame) -> Iterator[Caches]:
    """Petastorm caches (train, validation) of the labeled rows, deleted on exit; a search shares one pair among
    its trials."""
    tc = cfg.training
    cache = to_uri(f"{cfg.workspace.rstrip('/')}/cache/petastorm")
    n_files = tc.num_workers * tc.data.files_per_worker
    columns = data.select("features", "label", "split")
    train_conv = ParquetCache.materialize(columns.filter(F.col("split") == "train").drop("split"), cache, n_files)
    try:
        val_conv = ParquetCache.materialize(columns.filter(F.col("split") == "validation").drop("split"), cache,
                                            n_files)
        try:
            yield train_conv, val_conv
        finally:
            val_conv.delete()
    finally:
        train_conv.delete()


def fit(spark: SparkSession, cfg: Config, data: DataFrame, launch: Launch) -> list[WorkerResult]:
    """Distributed training: Petastorm caches of train and validation (deleted afterwards), then the barrier
    stage of the configured launcher; per-rank results ordered by rank."""
    with petastorm_caches(cfg, data) as caches:
        return fit_on(spark, cfg.training, caches, launch)


def fit_on(spark: SparkSession, tc: TrainingConf, caches: Caches, launch: Launch,
           on_epoch: Callable[[dict[str, Any]], bool] | None = None) -> list[WorkerResult]:
    """The barrier stage of `tc`'s launcher on materialized caches; `on_epoch` sees rank 0's report of each epoch
    on the driver and stops the training by returning True (TrainingStopped)."""
    LOG.info("train: %d %s workers, %s head, %d steps/epoch of %d rows/worker, validation %d steps, "
             "checkpoints %s", tc.num_workers, tc.backend, launch.head, launch.steps_per_epoch, tc.batch_size,
             launch.validation_steps, launch.checkpoint_dir)
    return make_launcher(spark, tc).run(launch.spec(tc, caches), on_epoch)
