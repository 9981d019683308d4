"""The text flow's features job: bronze tweets -> cleaned, labelled, hash-split rows -> text PipelineModel (fitted
on train) -> silver table of array<float> features, recorded as one MLflow run like the tabular features run.

`prepare_text` is pure DataFrame work driven by `cfg.flow` (scoring can reuse it); `run_features` does the I/O.
Rows that cannot be used are never dropped silently: each is counted under one reason, and the counts must add
up to the rows read.
"""

from __future__ import annotations

from typing import Any

import mlflow
from pyspark import StorageLevel
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import Word2VecModel
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from features.text import NGRAMS_COL, branches, text_stages, token_column
from pipelines.core.config import Config, ConfigError, TextFlowConf
from pipelines.core.delta import DeltaStore
from pipelines.core.logs import stage
from pipelines.core.tracking import job_run
from pipelines.features import VECTOR_COL, ensure_features_package
from pipelines.flows.common import (
    FEATURES,
    LABEL,
    LABEL_NAME,
    FlowFeatures,
    class_names,
    hash_split,
    read_source,
    with_labels,
    write_features,
)

JOB = "features"
TOP_TOKENS = 20
SAMPLES = 5
# Why a row is left out, in the order the reasons are checked (a row counts under its first reason).
REASONS = ("excluded_no_key", "duplicates_removed", "excluded_no_class", "excluded_empty_text")
_REASON = "_text_reason"


def _check_columns(tweets: DataFrame, conf: TextFlowConf) -> None:
    """The key, text and label columns must exist: name the config key of a missing one."""
    wanted = {"text.key": conf.key, "text.text_column": conf.text_column, "text.label.column": conf.label.column}
    missing = {k: c for k, c in wanted.items() if c not in tweets.columns}
    if missing:
        raise ConfigError(f"{', '.join(f'{k}={c!r}' for k, c in missing.items())}: no such column "
                          f"(have {tweets.columns})")


def prepare_text(tweets: DataFrame, conf: TextFlowConf, classes: list[str]) -> tuple[DataFrame, dict[str, int]]:
    """Dedupe on the key, label, leave out unusable rows (counted by reason), hash-split; returns (rows, counts).

    Of duplicate keys the row with text is kept, ties broken by a hash of the row, so the choice is
    deterministic. A null key is excluded (it cannot be split or deduplicated); a value outside the classes with
    no `other` class, or a null label value, is excluded; so is null or blank text. Raises RuntimeError when
    rows_in != rows_out + exclusions.
    """
    _check_columns(tweets, conf)
    key, text = F.col(conf.key), F.col(conf.text_column)
    blank = text.isNull() | (F.trim(text) == "")
    rest = sorted(c for c in tweets.columns if c != conf.key)
    rank = F.row_number().over(Window.partitionBy(conf.key).orderBy(blank.asc(), F.xxhash64(*rest).asc()))
    labelled = with_labels(tweets.withColumn("_dup_rank", rank), conf.label, classes)
    reason = (F.when(key.isNull(), REASONS[0]).when(F.col("_dup_rank") > 1, REASONS[1])
              .when(F.col(LABEL).isNull(), REASONS[2]).when(blank, REASONS[3]))
    marked = labelled.withColumn(_REASON, reason).drop("_dup_rank")
    by_reason = {r[_REASON]: int(r["count"]) for r in marked.groupBy(_REASON).count().collect()}
    rows_in = tweets.count()
    counts = {"rows_in": rows_in, **{r: by_reason.get(r, 0) for r in REASONS}, "rows_out": by_reason.get(None, 0)}
    if rows_in != counts["rows_out"] + sum(counts[r] for r in REASONS):
        raise RuntimeError(f"text rows do not add up: {counts}")
    kept = marked.filter(F.col(_REASON).isNull()).drop(_REASON)
    return hash_split(kept, conf.key, conf.split), counts


def feature_table(transformed: DataFrame, conf: TextFlowConf) -> DataFrame:
    """The silver table's columns: key, created_at (when present), text, label_name, label, split, features."""
    extra = ["created_at"] if "created_at" in transformed.columns else []
    return transformed.select(conf.key, *extra, conf.text_column, LABEL_NAME, LABEL, "split",
                              vector_to_array(VECTOR_COL, "float32").alias(FEATURES))


def text_report(model: PipelineModel, train: DataFrame, conf: TextFlowConf) -> dict[str, Any]:
    """Top tokens per class on train, Word2Vec vocabulary size and a few tokenized samples (for a human to read)."""
    tokens = token_column(conf)
    done = model.transform(train)
    counted = (done.select(LABEL_NAME, F.explode(tokens).alias("token")).groupBy(LABEL_NAME, "token").count()
               .withColumn("rank", F.row_number().over(
                   Window.partitionBy(LABEL_NAME).orderBy(F.desc("count"), F.asc("token"))))
               .filter(F.col("rank") <= TOP_TOKENS).orderBy(LABEL_NAME, "rank").collect())
    top: dict[str, list[list[Any]]] = {}
    for r in counted:
        top.setdefault(r[LABEL_NAME], []).append([r["token"], int(r["count"])])
    w2v = [s for s in model.stages if isinstance(s, Word2VecModel)]
    cols = [conf.key, conf.text_column, LABEL_NAME, tokens, *([NGRAMS_COL] if branches(conf)["ngram_tfidf"] else [])]
    samples = [r.asDict() for r in done.select(*cols).orderBy(F.xxhash64(conf.key)).limit(SAMPLES).collect()]
    return {"top_tokens": top, "word2vec_vocabulary": w2v[0].getVectors().count() if w2v else None,
            "samples": samples}


def _params(conf: TextFlowConf) -> dict[str, Any]:
    """The text config as flat MLflow params (text.<key>)."""
    flat = {f"text.{k}": v for k, v in conf.model_dump(mode="json", exclude={"label", "split"}).items()}
    flat["text.label"] = conf.label.model_dump_json()
    flat["text.split"] = conf.split.model_dump_json()
    return flat


def run_features(spark: SparkSession, cfg: Config, store: DeltaStore) -> FlowFeatures:
    """Read bronze tweets -> prepare -> fit the text stages on train -> write silver, as one MLflow run."""
    ensure_features_package()
    conf = cfg.flow
    with job_run(cfg, JOB) as active:
        run_id = active.info.run_id
        with stage("features.text.read") as s:
            tweets, version = read_source(store, cfg)
            s.add(table=cfg.features.source_table, version=version)
        with stage("features.text.prepare") as s:
            classes = class_names(tweets, conf.label)
            rows, counts = prepare_text(tweets, conf, classes)
            rows = rows.persist(StorageLevel.MEMORY_AND_DISK)
            s.add(classes=len(classes), **counts)
        try:
            mlflow.log_params(_params(conf))
            with stage("features.text.fit") as s:
                train = rows.filter(F.col("split") == "train")
                model = Pipeline(stages=text_stages(conf, VECTOR_COL)).fit(train)
                s.add(stages=len(model.stages))
            with stage("features.text.report") as s:
                report = text_report(model, train, conf)
                mlflow.log_dict(report, "text_report.json")
                s.add(word2vec_vocabulary=report["word2vec_vocabulary"])
            table = feature_table(model.transform(rows), conf)
            result = write_features(cfg, store, run_id, table, model, classes, None, counts, version)
        finally:
            rows.unpersist()
    return result
