"""The monitor stage: compare a scored batch with the model's training data (drift monitoring and feedback loop).

- input drift: PSI and KS per model input (raw columns, before preprocessing), training split vs the batch;
- prediction drift: PSI and KS of the batch's probabilities against the model's own probabilities on a sample
  of its training split;
- realized metric: where labels have arrived for the batch's rows, ROC AUC and accuracy of the stored
  predictions (the production feedback loop), beside the model's test metric;
- output: gold/drift (one partition per monitored window, replaced on re-run), MLflow metrics, a JSON report and
  PNG histograms of the drifted features. Crossing a threshold raises DriftAlert after everything is written.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore
from pipelines.core.errors import BadInput, DriftAlert
from pipelines.core.logs import LOG, stage
from pipelines.core.recorder import Recorder
from pipelines.flows.base import FEATURES, LABEL, Flow
from pipelines.stages.inputs import read_sources
from pipelines.stages.monitor.drift import FeatureDrift, drift_report, numeric_drift
from pipelines.stages.score.batch import ResolvedModel, model_udf, resolve_model

PREDICTION = "__prediction__"
DRIFT_SCHEMA = ("window string, feature string, kind string, psi double, ks double, ref_count bigint, "
                "cur_count bigint, ref_mean double, cur_mean double, alert boolean, model_name string, "
                "model_version string, monitored_at timestamp")


def is_alert(d: FeatureDrift, cfg: Config) -> bool:
    m = cfg.monitor
    psi_limit = m.prediction_psi_threshold if d.feature == PREDICTION else m.psi_threshold
    return d.psi > psi_limit or (d.ks is not None and d.ks > m.ks_threshold)


def realized_metrics(scored: DataFrame, labels: DataFrame, key: list[str]) -> dict[str, float]:
    """ROC AUC and accuracy of stored predictions on the rows whose label is known now."""
    from pyspark.ml.evaluation import BinaryClassificationEvaluator

    joined = scored.join(labels.filter(F.col(LABEL).isNotNull()), on=key, how="inner").cache()  # 2 passes below
    try:
        row = joined.agg(F.count("*").alias("n"), F.avg((F.col("prediction") == F.col("label")).cast("double"))
                         .alias("acc"), F.avg("label").alias("rate"), F.countDistinct("label").alias("classes")
                         ).first()
        if row["n"] == 0:
            return {"labeled_rows": 0.0}
        out = {"labeled_rows": float(row["n"]), "accuracy": float(row["acc"]), "label_rate": float(row["rate"])}
        if row["classes"] == 2:
            ev = BinaryClassificationEvaluator(rawPredictionCol="probability", labelCol="label")
            out["roc_auc"] = float(ev.evaluate(joined.select(F.col("probability").cast("double"),
                                                              F.col("label").cast("double"))))
    finally:
        joined.unpersist()
    return out


def _plots(ref: DataFrame, cur: DataFrame, drifted: list[FeatureDrift], folder: Path, rows: int = 20000) -> list[Path]:
    """One PNG per drifted feature: reference and batch histograms on shared bins."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for d in drifted:
        r = ref.select(d.feature).limit(rows).toPandas()[d.feature]
        c = cur.select(d.feature).limit(rows).toPandas()[d.feature]
        fig, ax = plt.subplots(figsize=(7, 4))
        if d.kind == "numeric":
            both = np.concatenate([r.dropna().to_numpy(float), c.dropna().to_numpy(float)])
            bins = np.histogram_bin_edges(both, bins=30) if both.size else 10
            ax.hist(r.dropna(), bins=bins, density=True, alpha=0.5, label="training")
            ax.hist(c.dropna(), bins=bins, density=True, alpha=0.5, label="batch")
        else:
            cats = list(r.value_counts().index[:15])
            x = np.arange(len(cats))
            ax.bar(x - 0.2, [r.eq(k).mean() for k in cats], 0.4, label="training")
            ax.bar(x + 0.2, [c.eq(k).mean() for k in cats], 0.4, label="batch")
            ax.set_xticks(x, [str(k) for k in cats], rotation=45, ha="right")
        ks = f", KS {d.ks:.3f}" if d.ks is not None else ""
        ax.set_title(f"{d.feature}: PSI {d.psi:.3f}{ks}")
        ax.set_ylabel("share")
        ax.legend()
        fig.tight_layout()
        path = folder / f"drift_{d.feature.strip('_')}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def prediction_drift(ref_probability: DataFrame, scored: DataFrame, cfg: Config) -> FeatureDrift:
    """Shift of the batch's probabilities from the model's probabilities on its training data."""
    d = numeric_drift(ref_probability, scored.select("probability"), "probability", cfg.monitor.bins)
    return FeatureDrift(PREDICTION, "prediction", d.psi, d.ks, d.ref_count, d.cur_count, d.ref_mean, d.cur_mean)


def reference_frame(spark: SparkSession, store: DeltaStore, model: ResolvedModel, rows: int) -> DataFrame:
    """The model's training split (raw inputs and feature vectors) at the feature-table version it trained on."""
    meta = model.meta
    table = store.read(meta["feature_table"], int(meta["feature_table_version"]))
    train = table.filter(F.col("split") == "train")
    total = train.count()
    if total == 0:
        raise BadInput(f"the training split of {meta['feature_table']} v{meta['feature_table_version']} is empty")
    return train.sample(fraction=min(1.0, rows / total), seed=7) if total > rows else train


def monitor_window(spark: SparkSession, cfg: Config, store: DeltaStore, flow: Flow, dates: list[date],
                   alias: str | None = None, version: int | None = None) -> dict[str, Any]:
    """Drift and realized metrics of the scored `dates`; writes the catalog's `drift` table; returns the report."""
    window = f"{min(dates).isoformat()}..{max(dates).isoformat()}"
    model = resolve_model(cfg, alias, version)
    predictions = cfg.catalog.path("predictions")
    if not store.exists(predictions):
        raise BadInput("no predictions table: run `spark-submit.sh score` first")
    frames, _ = read_sources(store, cfg, flow.sources(cfg))
    inputs = flow.monitoring_inputs(cfg, frames, dates)
    if inputs is None:
        raise BadInput(f"monitor: pipeline {cfg.pipeline!r} ({cfg.flow.kind} flow) has no drift monitor")
    scored = store.read(predictions).filter(inputs.window_filter)
    if scored.limit(1).count() == 0:
        raise BadInput(f"no predictions for {window}: score these dates first")
    with stage("monitor.inputs") as s:
        batch = inputs.batch.cache()
        ref = reference_frame(spark, store, model, cfg.monitor.reference_sample_rows).cache()
        results = drift_report(ref, batch, inputs.numeric, inputs.categorical, cfg.monitor.bins)
        s.add(features=len(results), ref_rows=results[0].ref_count if results else 0,
              batch_rows=results[0].cur_count if results else 0)
    with stage("monitor.predictions") as s:
        udf = model_udf(spark, cfg, model)
        out = "probability" if "probability" in model.result_type else "prediction"  # regression: the value
        pred = prediction_drift(ref.select(udf(FEATURES)[out].alias("probability")),
                                scored.select(F.col(out).alias("probability")), cfg)
        results.append(pred)
        s.add(psi=f"{pred.psi:.4f}", ks=f"{pred.ks:.4f}", ref_mean=f"{pred.ref_mean:.4f}",
              batch_mean=f"{pred.cur_mean:.4f}")
    with stage("monitor.realized") as s:
        realized = realized_metrics(scored, inputs.labels, inputs.key) if inputs.labels is not None else {}
        s.add(**{k: f"{v:.4f}" for k, v in realized.items()})
    alerts = [d for d in results if is_alert(d, cfg)]
    now = datetime.now(UTC)
    rows = [(window, d.feature, d.kind, float(d.psi), None if d.ks is None else float(d.ks), int(d.ref_count),
             int(d.cur_count), d.ref_mean, d.cur_mean, d in alerts, model.name, model.version, now) for d in results]
    table_version = store.write(spark.createDataFrame(rows, DRIFT_SCHEMA).coalesce(1), cfg.catalog.path("drift"),
                                "overwrite", ["window"], replace_partitions=[{"window": window}])
    report = {"window": window, "model": f"{model.name}/{model.version}", "alerts": [d.feature for d in alerts],
              "features": [asdict(d) for d in results], "realized": realized,
              "model_test_metrics": model.meta.get("test", {}), "drift_table_version": table_version}
    with tempfile.TemporaryDirectory(prefix="drift-") as tmp:
        report["plots"] = [p.name for p in _plots(ref, batch, [d for d in alerts if d.feature != PREDICTION],
                                                  Path(tmp))]
        _log(report, results, realized, tmp)
    batch.unpersist()
    ref.unpersist()
    return report


def _log(report: dict[str, Any], results: list[FeatureDrift], realized: dict[str, float], plot_dir: str) -> None:
    if mlflow.active_run() is None:
        return
    mlflow.log_metrics({f"psi.{d.feature.strip('_')}": d.psi for d in results})
    mlflow.log_metrics({f"ks.{d.feature.strip('_')}": d.ks for d in results if d.ks is not None})
    mlflow.log_metrics({f"realized.{k}": v for k, v in realized.items()} | {"alerts": len(report["alerts"])})
    mlflow.log_text(json.dumps(report, indent=2, default=str), "drift_report.json")
    mlflow.log_artifacts(plot_dir, "drift_plots")


def run_monitor(spark: SparkSession, cfg: Config, store: DeltaStore, flow: Flow, dates: list[date],
                alias: str | None = None, version: int | None = None) -> dict[str, Any]:
    """monitor_window() as one MLflow run; raises DriftAlert (exit 4) once everything is written and logged."""
    from pipelines.core.tracking import configure_mlflow

    configure_mlflow(cfg)
    with Recorder.start(cfg, "monitor") as rec:
        report = monitor_window(spark, cfg, store, flow, dates, alias, version)
        rec.params({"window": report["window"], "model": report["model"]})
    if report["alerts"]:
        LOG.warning("drift alert for %s: %s", report["window"], ", ".join(report["alerts"]))
        raise DriftAlert(f"{report['window']}: drift over threshold in {', '.join(report['alerts'])}")
    return report
