"""Labels and splits the flows share: a seeded hash split (a row keeps its split across runs and data versions)
and class labels from a string column (class ids in a stable order)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.flows.base import LABEL

LABEL_NAME = "label_name"  # the class as text
HASH_BUCKETS = 10_000


def hash_split(df: DataFrame, key: str, conf: Any) -> DataFrame:
    """Add `split` from a seeded hash of `key`: the same key always lands in the same split. With
    `key_segments` only the key's last parts are hashed (an image's folder and file name), so the split does not
    change when the landing zone moves (another workspace, hdfs://)."""
    value = F.col(key).cast("string")
    n = getattr(conf, "key_segments", 0)
    if n:
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


def class_names(df: DataFrame, conf: Any) -> list[str]:
    """The classes in id order: configured (plus `other` last), or every value of the column (`sort_classes`)."""
    if conf.classes is not None:
        return [*conf.classes, *([conf.other] if conf.other and conf.other not in conf.classes else [])]
    return sort_classes(r[0] for r in df.select(F.col(conf.column).cast("string")).distinct().collect())


def with_labels(df: DataFrame, conf: Any, classes: list[str]) -> DataFrame:
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
