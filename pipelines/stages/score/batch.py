"""The score stage: a registered model version -> gold predictions, for any flow.

`predict_batch` is pure (rows ready for the model -> gold rows: kept columns, the model's outputs, lineage); the
flow prepares the rows (cleaning, joins and the model's own preprocessing, or image bytes); the writers are
apart: replace the scored date partitions, replace the whole table, or upsert a stream's micro-batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pyspark.ml import PipelineModel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore, merge_rows, retry_on_conflict
from pipelines.core.errors import BadInput, MissingModel
from pipelines.core.logs import stage
from pipelines.core.recorder import Recorder
from pipelines.core.tracking import git_commit
from pipelines.flows.base import Flow, ScoringRows
from pipelines.stages.inputs import read_sources
from pipelines.training.pyfunc import load_preprocessing, model_meta

PRED = "_prediction"
RENAMED = {"label": "predicted_label"}  # model output fields renamed in gold (the class name beside its id)


@dataclass(frozen=True)
class ResolvedModel:
    """One registered model version, how it was asked for, and what it carries."""

    name: str
    version: str
    uri: str  # models:/<name>/<version>: pinned, so every row of a run uses the same version
    asked: str  # "@champion" or "/3"
    run_id: str
    meta: dict[str, Any]
    workspace: str | None = None
    _loaded: dict[str, PipelineModel] = field(default_factory=dict, compare=False, repr=False)

    def preprocessing(self) -> PipelineModel:
        """The preprocessing PipelineModel shipped inside the model version, loaded once per resolved model (a
        stream asks for it in every micro-batch; on a cluster workspace each load copies it to the cache)."""
        if "model" not in self._loaded:
            self._loaded["model"] = load_preprocessing(self.uri, self.workspace)
        return self._loaded["model"]

    @property
    def result_type(self) -> str:
        return self.meta["result_type"]


def resolve_model(cfg: Config, alias: str | None = None, version: int | None = None) -> ResolvedModel:
    """The model version to score with; MissingModel (exit 3) before anything is read or written."""
    name = cfg.mlflow.registered_model
    version = version if version is not None else cfg.scoring.model_version
    alias = alias or cfg.scoring.model_alias
    try:
        client = MlflowClient()
        mv = (client.get_model_version(name, str(version)) if version is not None
              else client.get_model_version_by_alias(name, alias))
    except MlflowException as e:
        asked = f"version {version}" if version is not None else f"alias {alias!r}"
        raise MissingModel(f"registered model {name!r} has no {asked} in {mlflow.get_tracking_uri()} "
                           f"({e.error_code})") from None
    uri = f"models:/{name}/{mv.version}"
    return ResolvedModel(name, str(mv.version), uri, f"/{version}" if version is not None else f"@{alias}",
                         mv.run_id or "", model_meta(uri), cfg.workspace)


def model_udf(spark: SparkSession, cfg: Config, model: ResolvedModel) -> Any:
    """The model as a Spark UDF with its explicit struct result type (never inferred)."""
    return mlflow.pyfunc.spark_udf(spark, model.uri, result_type=model.result_type,
                                   env_manager=cfg.scoring.env_manager)


def lineage_columns(model: ResolvedModel, input_version: int) -> list[Column]:
    """The model and data lineage every gold prediction row carries."""
    return [F.lit(model.name).alias("model_name"), F.lit(model.version).alias("model_version"),
            F.lit(model.run_id).alias("model_run_id"), F.lit(input_version).alias("input_table_version"),
            F.lit(datetime.now(UTC)).alias("scored_at")]


def predict_batch(rows: ScoringRows, model: ResolvedModel, udf: Any, input_version: int) -> DataFrame:
    """Gold rows: the flow's kept columns, every field of the model's output, model and data lineage."""
    fields = [f.strip().split()[0] for f in model.result_type.split(",")]
    scored = rows.rows.withColumn(PRED, udf(rows.input_column))
    return scored.select(*rows.keep, *[F.col(f"{PRED}.{f}").alias(RENAMED.get(f, f)) for f in fields],
                         *lineage_columns(model, input_version))


def commit_metadata(model: ResolvedModel, run_id: str | None) -> dict[str, str]:
    """What a gold commit records for lineage: the model version, the score run and the code's git commit."""
    return {"model": f"{model.name}/{model.version}", "git_commit": git_commit(),
            **({"run_id": run_id} if run_id else {})}


def replace_partitions(store: DeltaStore, path: str, gold: DataFrame, column: str, values: list[Any],
                       model: ResolvedModel, run_id: str | None = None) -> int:
    """Write `gold`, replacing exactly the partitions of `values` (a re-run of a date replaces that date). A
    commit that loses the race with another writer of those dates (a stream's upsert) is made again."""
    return retry_on_conflict(lambda: store.write(
        gold, path, "overwrite", [column],
        replace_partitions=[{column: v.isoformat() if isinstance(v, date) else v} for v in values],
        metadata=commit_metadata(model, run_id)), f"score: replace {column} partitions of {path}")


def replace_table(store: DeltaStore, path: str, gold: DataFrame, model: ResolvedModel, run_id: str | None = None
                  ) -> int:
    """Write `gold` as the whole table (a re-run writes the same rows again, never twice)."""
    return retry_on_conflict(lambda: store.write(gold, path, "overwrite", metadata=commit_metadata(model, run_id)),
                             f"score: replace {path}")


def upsert_partitions(store: DeltaStore, path: str, rows: DataFrame, key: list[str], date_col: str) -> int | None:
    """Upsert `rows` by natural key into the date partitions they touch: a row whose key is there replaces it, a
    new key is added. One MERGE commit, which reads the table inside its transaction: when batch scoring (or
    another stream) commits to the same rows first, the MERGE conflicts and is run again on the new version,
    so it never writes back a stale read."""
    if rows.select(date_col).limit(1).count() == 0:
        return store.version(path)
    return retry_on_conflict(lambda: merge_rows(store, rows, path, key, [date_col]), f"stream: upsert into {path}")


def summary(gold: DataFrame, rows_in: int) -> dict[str, Any]:
    """Rows in and scored, duplicates dropped, positive predictions (binary) and accuracy against the true class
    per split (multiclass), in one aggregation."""
    cols = set(gold.columns)
    binary = "probability" in cols and "predicted_label" not in cols
    group = ["split"] if "split" in cols else []
    aggs = [F.count("*").alias("n")]
    if binary:
        aggs.append(F.sum((F.col("prediction") == 1).cast("int")).alias("positive"))
    if "true_label" in cols:
        aggs += [F.count("true_label").alias("labeled"),
                 F.sum((F.col("true_label") == F.col("predicted_label")).cast("int")).alias("right")]
    agg = gold.groupBy(*group).agg(*aggs).collect()
    scored = sum(int(r["n"]) for r in agg)
    out: dict[str, Any] = {"rows_in": rows_in, "rows_scored": scored, "duplicates_removed": rows_in - scored}
    if binary:
        out["predicted_positive"] = sum(int(r["positive"] or 0) for r in agg)
    for r in agg:
        if "true_label" in cols and r["labeled"]:
            out[f"accuracy_{r['split']}"] = float(r["right"] or 0) / int(r["labeled"])
    return out


def score(spark: SparkSession, cfg: Config, store: DeltaStore, flow: Flow, dates: list[date] | None = None,
          model: ResolvedModel | None = None, run_id: str | None = None) -> dict[str, Any]:
    """Score the flow's source rows (the `dates`' rows, or all) into the catalog's `predictions` table; the
    commit records `run_id` (the score run) for lineage."""
    if dates is not None and not dates:
        raise BadInput("no dates to score")
    model = model or resolve_model(cfg)
    frames, versions = read_sources(store, cfg, flow.sources(cfg))
    input_version = versions[cfg.features.source_table]
    with stage("score.predict") as s:
        rows = flow.scoring_rows(cfg, model, frames, dates)
        if rows.partition_by and dates is None:
            raise BadInput(f"this pipeline's predictions are partitioned by {rows.partition_by}: give --date "
                           f"(or --stream)")
        gold = predict_batch(rows, model, model_udf(spark, cfg, model), input_version).cache()
        try:
            out = summary(gold, rows.rows_in)
            path = cfg.catalog.path("predictions")
            if rows.partition_by:
                out["gold_version"] = replace_partitions(store, path, gold, rows.partition_by, dates, model,
                                                           run_id)
            else:
                out["gold_version"] = replace_table(store, path, gold, model, run_id)
        finally:
            gold.unpersist()
        s.add(**{k: v for k, v in out.items() if k != "gold_version"})
    out.update(model_name=model.name, model_version=model.version, model_uri=model.uri,
               input_table_version=input_version, **({"dates": [d.isoformat() for d in dates]} if dates else {}))
    return out


def run_score(spark: SparkSession, cfg: Config, store: DeltaStore, flow: Flow, dates: list[date] | None = None,
              alias: str | None = None, version: int | None = None) -> dict[str, Any]:
    """score() as one MLflow run: the model version, dates, counts and the gold table version."""
    from pipelines.core.tracking import configure_mlflow

    configure_mlflow(cfg)
    with stage("score.resolve") as s:
        model = resolve_model(cfg, alias, version)  # a missing model fails before a run is even opened
        s.add(model=f"{model.name}/{model.version}", asked=model.asked)
    with Recorder.start(cfg, "score") as rec:
        out = score(spark, cfg, store, flow, dates, model, rec.run_id)
        rec.params({k: out[k] for k in ("model_name", "model_version", "input_table_version")}
                   | ({"dates": ",".join(out["dates"])} if "dates" in out else {}))
        rec.metrics({k: v for k, v in out.items() if k.startswith(("rows_", "accuracy_", "predicted_"))}
                    | {"duplicates_removed": out["duplicates_removed"]})
        rec.table_versions("gold", {cfg.scoring.table: out["gold_version"]})
    return out
