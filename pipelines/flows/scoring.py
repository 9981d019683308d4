"""score for the image and text flows: the bronze table's rows -> the registered classifier as an MLflow Spark UDF
-> gold/<scoring.table>.

Images go in as their encoded bytes (the pyfunc decodes them; no file paths), texts through the preprocessing
PipelineModel shipped inside the model. Each run scores the bronze table's current version and replaces the gold
table (a re-run writes the same rows again, never twice). The rows keep their true class (when known) and their
split, so the realised accuracy on the test split is measured through the serving path.
"""

from __future__ import annotations

from typing import Any

import mlflow
from pyspark.ml import PipelineModel
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore
from pipelines.core.errors import BadInput
from pipelines.core.logs import stage
from pipelines.features import VECTOR_COL, ensure_features_package
from pipelines.flows.common import LABEL_NAME, hash_split, with_labels
from pipelines.scoring import ResolvedModel, lineage_columns, resolve_model
from pipelines.training.pyfunc import CLASSIFIER_RESULT_TYPE, INPUT_COL, preprocessing_path

PRED = "_prediction"


def model_inputs(rows: DataFrame, cfg: Config, model: ResolvedModel) -> tuple[DataFrame, str, str]:
    """(rows with the model's input column, that column, the key) for the flow and the model's input kind."""
    kind = model.meta.get("input")
    if cfg.flow.kind == "image":
        if kind != "image":
            raise BadInput(f"model {model.name}{model.asked} reads {kind!r}, not image bytes")
        c = cfg.flow
        out = rows.withColumn(LABEL_NAME, F.col(c.label_column).cast("string"))
        return hash_split(out, c.key, c.split), c.content_column, c.key
    if kind != "features":
        raise BadInput(f"model {model.name}{model.asked} reads {kind!r}, not text feature vectors")
    c = cfg.flow
    if c.text_column not in rows.columns:
        raise BadInput(f"input rows lack the text column {c.text_column!r}")
    ensure_features_package()
    prep = PipelineModel.load(preprocessing_path(model.uri, cfg.workspace))
    labeled = with_labels(rows, c.label, model.meta["classes"]) if c.label.column in rows.columns else \
        rows.withColumn(LABEL_NAME, F.lit(None).cast("string"))
    vectors = prep.transform(hash_split(labeled, c.key, c.split))
    return vectors.withColumn(INPUT_COL, vector_to_array(VECTOR_COL, "float32")), INPUT_COL, c.key


def predict(rows: DataFrame, cfg: Config, model: ResolvedModel, udf: Any, input_version: int) -> DataFrame:
    """Gold rows: key, split, true class, predicted class id and name, its probability, model and data lineage."""
    prepared, column, key = model_inputs(rows, cfg, model)
    scored = prepared.withColumn(PRED, udf(column))
    return scored.select(
        key, "split", F.col(LABEL_NAME).alias("true_label"),
        F.col(f"{PRED}.prediction").alias("prediction"), F.col(f"{PRED}.label").alias("predicted_label"),
        F.col(f"{PRED}.probability").alias("probability"), *lineage_columns(model, input_version),
    )


def score(spark: SparkSession, cfg: Config, store: DeltaStore, alias: str | None = None,
          version: int | None = None) -> dict[str, Any]:
    """Score the flow's bronze table into gold/<scoring.table> as one MLflow run; returns counts and accuracy."""
    from pipelines.core.tracking import configure_mlflow, job_run

    configure_mlflow(cfg)
    model = resolve_model(cfg, alias, version)  # a missing model fails before a run is opened (exit 3)
    with job_run(cfg, "score"), stage("score.predict") as s:
        bronze = cfg.catalog.path(cfg.features.source_table)
        input_version = store.version(bronze)
        if input_version is None:
            raise BadInput(f"no bronze table {bronze}: run ingest first")
        key = cfg.flow.key
        raw = store.read(bronze, input_version)
        rows_in = raw.count()
        rows = raw.dropDuplicates([key])
        udf = mlflow.pyfunc.spark_udf(spark, model.uri, result_type=CLASSIFIER_RESULT_TYPE,
                                      env_manager=cfg.scoring.env_manager)
        gold = predict(rows, cfg, model, udf, input_version).cache()
        try:
            out = _summary(gold, rows_in)
            path = cfg.catalog.path("predictions")
            out["gold_version"] = store.write(gold, path, "overwrite",
                                              metadata={"model": f"{model.name}/{model.version}"})
        finally:
            gold.unpersist()
        out.update(model_name=model.name, model_version=model.version, model_uri=model.uri,
                   input_table_version=input_version)
        mlflow.log_params({k: out[k] for k in ("model_name", "model_version", "input_table_version")})
        mlflow.log_metrics({k: v for k, v in out.items() if k.startswith(("rows_", "accuracy_"))})
        mlflow.set_tag(f"table_version.gold.{cfg.scoring.table}", str(out["gold_version"]))
        s.add(**{k: v for k, v in out.items() if k.startswith(("rows_", "accuracy_"))})
    return out


def _summary(gold: DataFrame, rows_in: int) -> dict[str, Any]:
    """Rows in and scored, duplicates dropped, and accuracy against the true class per split (one job)."""
    agg = (gold.groupBy("split")
           .agg(F.count("*").alias("n"), F.count("true_label").alias("labeled"),
                F.sum((F.col("true_label") == F.col("predicted_label")).cast("int")).alias("right"))
           .collect())
    scored = sum(int(r["n"]) for r in agg)
    out: dict[str, Any] = {"rows_in": rows_in, "rows_scored": scored, "rows_duplicates_dropped": rows_in - scored}
    for r in agg:
        if r["labeled"]:
            out[f"accuracy_{r['split']}"] = float(r["right"] or 0) / int(r["labeled"])
    return out
