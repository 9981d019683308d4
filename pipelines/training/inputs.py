"""What one training reads, resolved on the driver before anything is launched: the features run (its pinned table
version, classes and image shape), the flow's head, the checkpoint folder to resume from, and the labeled rows of
that table version with their per-split counts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import mlflow
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore
from pipelines.core.recorder import FeaturesRecord, features_record, latest_features_record
from pipelines.core.tracking import configure_mlflow
from pipelines.training import checkpoints
from pipelines.training.heads import Head, TrainingInputError, get_head

if TYPE_CHECKING:
    from pipelines.flows.base import Flow

JOB = "train"  # the train job's runs; their ids name the checkpoint folders --resume looks in
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Task:
    """The resolved inputs of one training: features record, head, classes, image shape, resume folder."""

    record: FeaturesRecord
    head: Head
    classes: list[str] | None
    input_shape: tuple[int, ...] | None  # what the network reads when it is not a flat vector (a CNN's images)
    resume_dir: str | None

    @property
    def num_classes(self) -> int:
        if self.head.name == "multiclass":
            return len(self.classes or [])
        return 2 if self.head.classified else 1


@dataclass
class TrainingData:
    """The labeled rows (split, label, features) of the pinned table version, persisted, and their counts."""

    rows: DataFrame
    counts: dict[str, dict[str, Any]]  # split -> rows (+ positives for binary, label mean / std for regression)
    per_class: dict[int, int]  # train rows per class id (classifying heads)

    @property
    def label_scale(self) -> tuple[float, float] | None:
        """(mean, std) of the train labels, for a regression head's output layer."""
        train = self.counts["train"]
        return (train["label_mean"], train["label_std"]) if "label_mean" in train else None

    def split(self, name: str) -> DataFrame:
        """The rows of one split."""
        return self.rows.filter(F.col("split") == name)


def checkpoint_root(cfg: Config) -> str:
    """The folder that holds one checkpoint folder per train run (and per search trial)."""
    return (cfg.training.checkpoint_dir or f"{cfg.workspace.rstrip('/')}/checkpoints").rstrip("/")


def resolve_source(cfg: Config, features_run_id: str | None) -> FeaturesRecord:
    """The features run to train on: the given id, training.data.features_run_id, or the latest one."""
    run_id = features_run_id or cfg.training.data.features_run_id
    try:
        return features_record(cfg, run_id) if run_id else latest_features_record(cfg)
    except LookupError as e:
        raise TrainingInputError(str(e)) from e


def resolve_task(cfg: Config, flow: Flow, features_run_id: str | None, resume: str | None) -> Task:
    """Features record, the flow's head (which must be the one the features run was built for), classes and
    image shape, and the checkpoint folder to resume from."""
    record = resolve_source(cfg, features_run_id)
    head = get_head(flow.head(cfg))
    if record.head != head.name:
        raise TrainingInputError(f"features run {record.run_id} was built for a {record.head} model, the flow trains "
                                 f"a {head.name} model: run the features job again")
    if head.name == "multiclass" and not record.classes:
        raise TrainingInputError(f"features run {record.run_id} records no classes")
    kind = cfg.training.network.kind
    if kind == "cnn" and not record.input_shape:
        raise TrainingInputError("training.network.kind cnn needs image features; this features run has none")
    shape = tuple(record.input_shape) if record.input_shape and kind == "cnn" else None
    classes = list(record.classes) if record.classes and head.name == "multiclass" else None
    resume_dir = resolve_resume(cfg, resume) if resume else None
    return Task(record, head, classes, shape, resume_dir)


def resolve_resume(cfg: Config, resume: str) -> str:
    """Checkpoint folder to continue from: a train run's id, or 'latest' = newest train run with checkpoints."""
    root = checkpoint_root(cfg)
    if resume != "latest":
        if not checkpoints.list_epochs(f"{root}/{resume}"):
            raise TrainingInputError(f"--resume {resume}: no checkpoints in {root}/{resume}")
        return f"{root}/{resume}"
    exp = configure_mlflow(cfg)
    runs = mlflow.search_runs(experiment_ids=[exp], output_format="list", order_by=["attributes.start_time DESC"],
                              filter_string=f"tags.job = '{JOB}'", max_results=50)
    for r in runs:
        if checkpoints.list_epochs(f"{root}/{r.info.run_id}"):
            return f"{root}/{r.info.run_id}"
    raise TrainingInputError(f"--resume: no earlier train run has checkpoints under {root}")


def load_training_data(store: DeltaStore, cfg: Config, record: FeaturesRecord, head: Head) -> TrainingData:
    """Labeled rows (split, label as the head's type, features) of the pinned table version, persisted, with
    per-split counts and (classifying heads) per-class train counts."""
    table = store.read(record.table_path, record.table_version)
    where = f"{record.table_path} v{record.table_version}"
    missing = {"split", "label", "features"} - set(table.columns)
    if missing:
        raise TrainingInputError(f"feature table {where} lacks {sorted(missing)}")
    data = (table.filter(F.col("label").isNotNull() & F.col("split").isin(*SPLITS))
            .select("split", F.col("label").cast(head.label_type).alias("label"),
                    F.col("features").cast("array<float>")))
    fraction = cfg.training.data.sample_fraction
    if fraction < 1:
        data = data.sample(fraction=fraction, seed=cfg.training.seed)
    data = data.persist(StorageLevel.MEMORY_AND_DISK)
    extra = {"binary": [F.sum("label").alias("positives")],
             "regression": [F.avg("label").alias("label_mean"), F.stddev_pop("label").alias("label_std")]
             }.get(head.name, [])
    rows = (data.groupBy("split")
            .agg(F.count("*").alias("rows"), F.min(F.size("features")).alias("min_len"),
                 F.max(F.size("features")).alias("max_len"), *extra)
            .collect())
    counts = {r["split"]: {"rows": int(r["rows"]), "min_len": int(r["min_len"]), "max_len": int(r["max_len"]),
                           **{c: (int(r[c] or 0) if c == "positives" else float(r[c] or 0.0))
                              for c in r.asDict() if c in ("positives", "label_mean", "label_std")}}
              for r in rows}
    empty = [s for s in SPLITS if counts.get(s, {}).get("rows", 0) == 0]
    if empty:
        data.unpersist()
        raise TrainingInputError(f"feature table {where}: no labeled rows in split(s) {empty}")
    lengths = {c[k] for c in counts.values() for k in ("min_len", "max_len")}
    if lengths != {record.vector_size}:
        data.unpersist()
        raise TrainingInputError(f"features arrays have lengths {sorted(lengths)}, the features run says "
                                 f"{record.vector_size}")
    per_class: dict[int, int] = {}
    if head.classified:
        per_class = {int(r["label"]): int(r["count"])
                     for r in data.filter(F.col("split") == "train").groupBy("label").count().collect()}
    return TrainingData(data, counts, per_class)


def class_weights(cfg: Config, task: Task, data: TrainingData) -> dict[int, float] | None:
    """The head's class weights when training.class_weights is on (after checking the train split's classes)."""
    if not task.head.classified:
        return None
    task.head.check_classes(data.per_class, task.num_classes)
    return task.head.class_weights(data.per_class, task.num_classes) if cfg.training.class_weights else None
