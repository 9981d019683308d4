"""What the image and text flows share: a hash split, class labels from a string column, and the features run
record (the same MLflow tags the tabular features run writes, so training finds either the same way)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import mlflow
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.core.config import ClassLabelConf, Config, ConfigError, HashSplitConf
from pipelines.core.delta import DeltaStore
from pipelines.core.logs import LOG, stage
from pipelines.features import MODEL_ARTIFACT, save_preprocessing

SPLITS = ("train", "validation", "test")
LABEL = "label"  # int class id
LABEL_NAME = "label_name"  # the class as text
FEATURES = "features"  # array<float>
HASH_BUCKETS = 10_000


def hash_split(df: DataFrame, key: str, conf: HashSplitConf) -> DataFrame:
    """Add `split` from a seeded hash of `key`: the same key always lands in the same split. With
    `key_segments` only the key's last parts are hashed (an image's folder and file name), so the split does not
    change when the landing zone moves (another workspace, hdfs://)."""
    value = F.col(key).cast("string")
    if conf.key_segments:
        n = conf.key_segments
        value = F.concat_ws("/", F.slice(F.split(value, "/"), -n, n))
    u = (F.abs(F.xxhash64(value, F.lit(conf.seed))) % HASH_BUCKETS) / float(HASH_BUCKETS)
    return df.withColumn("split", F.when(u < conf.test, "test")
                         .when(u < conf.test + conf.validation, "validation").otherwise("train"))


def sort_classes(values: Iterable[str | None]) -> list[str]:
    """Distinct non-null labels in class-id order: numerically when all are digits ("10" after "9"), else text."""
    distinct = {v for v in values if v is not None}
    if distinct and all(v.isascii() and v.isdigit() for v in distinct):
        return sorted(distinct, key=lambda v: (int(v), v))
    return sorted(distinct)


def class_names(df: DataFrame, conf: ClassLabelConf) -> list[str]:
    """The classes in id order: configured (plus `other` last), or every value of the column (`sort_classes`)."""
    if conf.classes is not None:
        return [*conf.classes, *([conf.other] if conf.other and conf.other not in conf.classes else [])]
    return sort_classes(r[0] for r in df.select(F.col(conf.column).cast("string")).distinct().collect())


def read_source(store: DeltaStore, cfg: Config) -> tuple[DataFrame, int]:
    """The flow's one bronze table (features.source_table) at its pinned version, latest when unpinned.

    The image and text flows read no other table (joins are a tabular-flow matter), so pinning another is an error.
    """
    name = cfg.features.source_table
    path = cfg.catalog.path(name)
    latest = store.version(path)
    if latest is None:
        raise FileNotFoundError(f"no bronze table {name!r} at {path}: run ingest first")
    unknown = sorted(set(cfg.features.bronze_versions) - {name})
    if unknown:
        raise ConfigError(f"features.bronze_versions: {unknown} are not read by the {cfg.flow.kind} flow "
                          f"(it reads {name!r})")
    version = cfg.features.bronze_versions.get(name, latest)
    if version > latest:
        raise ConfigError(f"features.bronze_versions.{name}: version {version} does not exist (latest is {latest})")
    return store.read(path, version), version


def with_labels(df: DataFrame, conf: ClassLabelConf, classes: list[str]) -> DataFrame:
    """Add `label_name` (the value, or `other`) and `label` (its index; null = not a class, excluded later)."""
    value = F.col(conf.column).cast("string")
    known = value.isin(*classes) if classes else F.lit(False)
    name = F.when(known, value)
    if conf.other is not None:
        name = name.when(value.isNotNull(), F.lit(conf.other))
    index = F.lit(None).cast("int")
    for i, c in enumerate(classes):
        index = F.when(F.col(LABEL_NAME) == c, F.lit(i)).otherwise(index)
    return df.withColumn(LABEL_NAME, name).withColumn(LABEL, index)


def split_counts(table: DataFrame, classes: list[str]) -> dict[str, dict[str, int]]:
    """Rows per split and per class within each split (one aggregation)."""
    rows = table.groupBy("split", LABEL).count().collect()
    out: dict[str, dict[str, int]] = {s: {"rows": 0} for s in SPLITS}
    for r in rows:
        d = out.setdefault(r["split"], {"rows": 0})
        d["rows"] += int(r["count"])
        d[f"class.{classes[r[LABEL]]}"] = int(r["count"])
    return out


@dataclass
class FlowFeatures:
    """A finished image or text features run."""

    run_id: str
    table_path: str
    table_version: int
    model_path: str
    vector_size: int
    classes: list[str]
    input_shape: list[int] | None
    counts: dict[str, Any] = field(default_factory=dict)
    splits: dict[str, dict[str, int]] = field(default_factory=dict)


def write_features(cfg: Config, store: DeltaStore, run_id: str, table: DataFrame, model: PipelineModel,
                   classes: list[str], input_shape: list[int] | None, counts: dict[str, Any],
                   bronze_version: int) -> FlowFeatures:
    """Write the silver table (one new version), save and log the fitted PipelineModel, tag the run the way
    training looks features runs up; the rows read back must equal the rows built."""
    fc = cfg.features
    out_path = cfg.catalog.path("features")
    with stage("features.write") as s:
        meta = {"run_id": run_id, "job": "features", "pipeline": fc.pipeline,
                "bronze_versions": json.dumps({fc.source_table: bronze_version})}
        version = store.write(table, out_path, "overwrite", metadata=meta)
        written = store.read(out_path, version)
        n = written.count()
        if n != counts["rows_out"]:
            raise RuntimeError(f"wrote {n} rows to {out_path} but built {counts['rows_out']}")
        sizes = written.select(F.min(F.size(FEATURES)), F.max(F.size(FEATURES))).first()
        if sizes[0] != sizes[1]:
            raise RuntimeError(f"{out_path}: feature arrays of different lengths {sizes[0]}..{sizes[1]}")
        splits = split_counts(written, classes)
        s.add(table_version=version, rows=n, vector_size=sizes[0])
    model_path = save_preprocessing(model, cfg, fc.model_dir, run_id)
    result = FlowFeatures(run_id, out_path, version, model_path, int(sizes[0]), classes, input_shape, counts,
                          splits)
    mlflow.set_tags({"feature_table": fc.output_table, "feature_table_path": out_path,
                     "feature_table_version": str(version), "preprocessing_path": model_path,
                     "preprocessing_artifact": MODEL_ARTIFACT, "pipeline": fc.pipeline, "flow": cfg.flow.kind,
                     "vector_size": str(result.vector_size), "classes": json.dumps(classes),
                     **({"input_shape": json.dumps(input_shape)} if input_shape else {})})
    mlflow.log_params({"pipeline": fc.pipeline, "flow": cfg.flow.kind, "source_table": fc.source_table,
                       "output_table": fc.output_table, f"bronze_version.{fc.source_table}": bronze_version,
                       "classes": json.dumps(classes)[:500]})
    mlflow.log_metrics({"vector_size": result.vector_size, "num_classes": len(classes),
                        **{k: v for k, v in counts.items() if isinstance(v, int | float)},
                        **{f"{sp}.{k}": v for sp, d in splits.items() for k, v in d.items()}})
    mlflow.log_dict({"counts": counts, "splits": splits, "classes": classes, "input_shape": input_shape},
                    "features_report.json")
    LOG.info("features: table %s version %d, %d rows, %d classes, vector size %d, run %s", out_path, version,
             counts["rows_out"], len(classes), result.vector_size, run_id)
    return result


def flow_tags(run_id: str) -> tuple[list[str], list[int] | None]:
    """(classes, input_shape) recorded by an image or text features run."""
    tags = mlflow.get_run(run_id).data.tags
    if "classes" not in tags:
        raise LookupError(f"features run {run_id} records no classes: it is not an image or text features run")
    shape = tags.get("input_shape")
    return json.loads(tags["classes"]), json.loads(shape) if shape else None
