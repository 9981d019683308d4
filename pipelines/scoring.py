"""score: the flights of given dates -> gold predictions, with the registered model's own preprocessing.

The rows go through the same cleaning and joins as training (pipelines.features.clean/enrich), then the fitted
preprocessing PipelineModel stored inside the model version (unseen categories and missing weather are handled
by its StringIndexer(keep) and Imputer stages), then the model as an MLflow Spark UDF with an explicit result
type. Each date is one partition of the gold table and a re-run replaces exactly that partition.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pyspark.ml import PipelineModel
from pyspark.ml.functions import vector_to_array
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore
from pipelines.core.errors import BadInput, MissingModel
from pipelines.core.logs import stage
from pipelines.features import VECTOR_COL, clean, enrich, ensure_features_package, pipeline_inputs, read_bronze
from pipelines.training.pyfunc import RESULT_TYPE, model_meta, preprocessing_path

PRED = "_prediction"


@dataclass(frozen=True)
class ResolvedModel:
    """One registered model version, how it was asked for, and what it carries."""

    name: str
    version: str
    uri: str  # models:/<name>/<version>: pinned, so every row of a run uses the same version
    asked: str  # "@champion" or "/3"
    run_id: str
    meta: dict[str, Any]


def resolve_model(cfg: Config, alias: str | None = None, version: int | None = None) -> ResolvedModel:
    """The model version to score with; MissingModel (exit 3) before anything is read or written."""
    name = cfg.mlflow.registered_model
    version = version if version is not None else cfg.scoring.model_version
    alias = alias or cfg.scoring.model_alias
    client = MlflowClient()
    try:
        mv = (client.get_model_version(name, str(version)) if version is not None
              else client.get_model_version_by_alias(name, alias))
    except MlflowException as e:
        asked = f"version {version}" if version is not None else f"alias {alias!r}"
        raise MissingModel(f"registered model {name!r} has no {asked} in {mlflow.get_tracking_uri()} "
                           f"({e.error_code})") from None
    uri = f"models:/{name}/{mv.version}"
    return ResolvedModel(name, str(mv.version), uri, f"/{version}" if version is not None else f"@{alias}",
                         mv.run_id or "", model_meta(uri))


def date_column(cfg: Config) -> Column:
    if not cfg.flow.date_columns:
        return F.col(cfg.flow.date_name).cast("date")
    y, m, d = cfg.flow.date_columns
    return F.make_date(F.col(y).cast("int"), F.col(m).cast("int"), F.col(d).cast("int"))


def lineage_columns(model: ResolvedModel, input_version: int) -> list[Column]:
    """The model and data lineage every gold prediction row carries."""
    return [F.lit(model.name).alias("model_name"), F.lit(model.version).alias("model_version"),
            F.lit(model.run_id).alias("model_run_id"), F.lit(input_version).alias("input_table_version"),
            F.lit(datetime.now(UTC)).alias("scored_at")]


def predict(enriched: DataFrame, preprocessing: PipelineModel, udf: Any, model: ResolvedModel,
            cfg: Config, input_version: int) -> DataFrame:
    """Preprocess, score, and shape the gold rows: key, date, probability, prediction, model and data lineage."""
    fc = cfg.flow
    missing = sorted(c for c in pipeline_inputs(preprocessing) if c not in enriched.columns)
    if missing:
        raise BadInput(f"input rows lack the model's input columns {missing}")
    vectors = preprocessing.transform(enriched).withColumn("features", vector_to_array(VECTOR_COL, "float32"))
    scored = vectors.withColumn(PRED, udf("features"))
    return scored.select(
        *fc.key, fc.date_name,
        F.col(f"{PRED}.probability").alias("probability"), F.col(f"{PRED}.prediction").alias("prediction"),
        *lineage_columns(model, input_version),
    )


def check_signature(enriched: DataFrame, preprocessing: PipelineModel, model: ResolvedModel) -> None:
    """The preprocessing output must match the model's input size; checked on one row before any write."""
    sample = preprocessing.transform(enriched.limit(1)).select(F.size(vector_to_array(VECTOR_COL)).alias("n"))
    first = sample.first()
    expected = int(model.meta["vector_size"])
    if first is not None and first["n"] != expected:
        raise BadInput(f"model {model.name}{model.asked} expects feature vectors of size {expected}, "
                       f"its preprocessing produced {first['n']}")


def load_model_parts(spark: SparkSession, cfg: Config, model: ResolvedModel) -> tuple[PipelineModel, Any]:
    """The model's preprocessing PipelineModel and the model as a Spark UDF (explicit struct result type)."""
    ensure_features_package()
    preprocessing = PipelineModel.load(preprocessing_path(model.uri, cfg.workspace))
    udf = mlflow.pyfunc.spark_udf(spark, model.uri, result_type=RESULT_TYPE, env_manager=cfg.scoring.env_manager)
    return preprocessing, udf


def score_dates(spark: SparkSession, cfg: Config, store: DeltaStore, dates: list[date],
                alias: str | None = None, version: int | None = None,
                model: ResolvedModel | None = None) -> dict[str, Any]:
    """Score the flights of `dates` into gold/<scoring.table>, replacing exactly those dates' partitions (with
    `model` when the caller resolved it already)."""
    if not dates:
        raise BadInput("no dates to score")
    fc, source = cfg.flow, cfg.features.source_table
    with stage("score.resolve") as s:
        model = model or resolve_model(cfg, alias, version)
        s.add(model=f"{model.name}/{model.version}", asked=model.asked)
    frames, versions = read_bronze(store, cfg)
    facts = frames[source].filter(date_column(cfg).isin(dates))
    with stage("score.predict") as s:
        rows_in = facts.count()
        if rows_in == 0:
            raise BadInput(f"no {source} rows scheduled on {', '.join(map(str, dates))}")
        enriched = enrich(clean(facts, fc), {j.table: frames[j.table] for j in fc.joins}, fc)
        preprocessing, udf = load_model_parts(spark, cfg, model)
        check_signature(enriched, preprocessing, model)
        gold = predict(enriched, preprocessing, udf, model, cfg, versions[source]).cache()
        rows_out = gold.count()
        positives = gold.filter("prediction = 1").count()
        s.add(rows_in=rows_in, rows_scored=rows_out, duplicates_removed=rows_in - rows_out, predicted_late=positives)
    try:
        path = cfg.catalog.path("predictions")
        table_version = store.write(gold, path, "overwrite", [fc.date_name],
                                    replace_partitions=[{fc.date_name: d.isoformat()} for d in dates],
                                    metadata={"model": f"{model.name}/{model.version}"})
    finally:
        gold.unpersist()
    return {"model_name": model.name, "model_version": model.version, "model_uri": model.uri,
            "dates": [d.isoformat() for d in dates], "rows_in": rows_in, "rows_scored": rows_out,
            "predicted_late": positives, "gold_version": table_version,
            "input_table_version": versions[source]}


def run_score(spark: SparkSession, cfg: Config, store: DeltaStore, dates: list[date],
              alias: str | None = None, version: int | None = None) -> dict[str, Any]:
    """score_dates() as one MLflow run: the model version, dates, counts and the gold table version."""
    from pipelines.core.tracking import configure_mlflow, job_run

    configure_mlflow(cfg)
    model = resolve_model(cfg, alias, version)  # a missing model fails before a run is even opened
    with job_run(cfg, "score"):
        out = score_dates(spark, cfg, store, dates, model=model)
        mlflow.log_params({k: out[k] for k in ("model_name", "model_version", "input_table_version")}
                          | {"dates": ",".join(out["dates"])[:500]})
        mlflow.log_metrics({k: out[k] for k in ("rows_in", "rows_scored", "predicted_late")})
        mlflow.set_tag("table_version.gold.predictions", str(out["gold_version"]))
    return out
