"""The features stage: a flow's bronze inputs at pinned versions -> its feature set -> one new version of the
silver feature table, the fitted preprocessing saved and logged, all recorded as one MLflow run whose
features-run record training and scoring read back (pipelines.core.recorder)."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from typing import Any

from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.core import files
from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore
from pipelines.core.logs import LOG, stage
from pipelines.core.recorder import FEATURES_JOB, PREPROCESSING_ARTIFACT, FeaturesRecord, Recorder, flat
from pipelines.core.tracking import git_commit
from pipelines.flows.base import FEATURES, LABEL, SPLITS, FeatureSet, Flow
from pipelines.stages.inputs import read_sources


@dataclass
class FeaturesResult:
    """A finished features run: its record, the row counts, per-split counts and the flow's statistics."""

    run: FeaturesRecord
    counts: dict[str, Any]
    splits: dict[str, dict[str, Any]]
    stats: dict[str, Any] | None = None
    feature_names: list[str] | None = None


def split_aggregates(table: DataFrame) -> list[Any]:
    """Per split, in one pass: rows, labelled rows, the label's mean, and the shortest and longest feature array."""
    label = F.col(LABEL)
    return table.groupBy("split").agg(F.count("*").alias("rows"), F.count(label).alias("labeled"),
                                      F.avg(label.cast("double")).alias("mean"),
                                      F.min(F.size(FEATURES)).alias("lo"), F.max(F.size(FEATURES)).alias("hi")
                                      ).collect()


def split_counts(table: DataFrame, head: str, classes: list[str] | None, rows: list[Any] | None = None
                 ) -> dict[str, dict[str, Any]]:
    """Per split: rows, labelled rows, and the label's positives and rate (binary), rows per class
    (multiclass) or mean (regression); `rows` are split_aggregates(table) when already computed."""
    label = F.col(LABEL)
    rows = rows if rows is not None else split_aggregates(table)
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        d = out[r["split"]] = {"rows": int(r["rows"]), "labeled": int(r["labeled"]),
                               "no_label": int(r["rows"] - r["labeled"])}
        if head == "binary":
            d["positives"] = round((r["mean"] or 0.0) * r["labeled"])
            d["label_rate"] = r["mean"]
        elif head == "regression":
            d["label_mean"] = r["mean"]
    if head == "multiclass" and classes:
        for r in table.groupBy("split", LABEL).count().filter(label.isNotNull()).collect():
            out[r["split"]][f"class.{classes[r[LABEL]]}"] = int(r["count"])
    order = [*SPLITS, *sorted(set(out) - set(SPLITS))]
    return {s: out[s] for s in order if s in out}


def save_preprocessing(model: PipelineModel, cfg: Config, run_id: str, recorder: Recorder) -> str:
    """Save the fitted PipelineModel under features.model_dir (default <workspace>/models/preprocessing), one
    folder per run, and log it as the run's `preprocessing` artifact (through a local copy from a remote file
    system)."""
    base = cfg.features.model_dir or f"{cfg.workspace.rstrip('/')}/models/preprocessing"
    path = f"{base.rstrip('/')}/{run_id}"
    model.write().overwrite().save(path)
    if "://" in path and not path.startswith("file://"):  # hdfs:// and object stores: through a local copy
        with tempfile.TemporaryDirectory() as tmp:
            recorder.artifacts(files.copy_to_local(path, tmp), PREPROCESSING_ARTIFACT)
    else:
        recorder.artifacts(path.removeprefix("file://"), PREPROCESSING_ARTIFACT)
    return path


def write_feature_table(store: DeltaStore, cfg: Config, fs: FeatureSet, run_id: str, versions: dict[str, int]
                        ) -> tuple[int, int, DataFrame, list[Any]]:
    """One new version of the silver table; the rows read back must equal the rows built and every feature
    array must have one length. Returns (version, vector size, the written version as a DataFrame, its
    split_aggregates: the same pass serves the checks and the split counts)."""
    path = cfg.catalog.path("features")
    meta = {"run_id": run_id, "job": FEATURES_JOB, "pipeline": cfg.features.pipeline,
            "bronze_versions": json.dumps(versions, sort_keys=True), "git_commit": git_commit()}
    version = store.write(fs.table, path, "overwrite", metadata=meta)
    written = store.read(path, version)
    by_split = split_aggregates(written)
    n = sum(r["rows"] for r in by_split)
    lo, hi = min((r["lo"] for r in by_split), default=0), max((r["hi"] for r in by_split), default=0)
    if n != fs.counts["rows_out"]:
        raise RuntimeError(f"wrote {n} rows to {path} but built {fs.counts['rows_out']}")
    if lo != hi:
        raise RuntimeError(f"{path}: feature arrays of different lengths {lo}..{hi}")
    return version, int(lo or 0), written, by_split


def run_features(spark: SparkSession, cfg: Config, store: DeltaStore, flow: Flow) -> FeaturesResult:
    """Read the flow's bronze inputs -> featurize -> write silver -> save preprocessing, as one MLflow run."""
    fc = cfg.features
    with Recorder.start(cfg, FEATURES_JOB) as rec:
        with stage("features.read") as s:
            frames, versions = read_sources(store, cfg, flow.sources(cfg), fc.bronze_versions)
            s.add(**{f"{t}_version": v for t, v in versions.items()})
        rec.params({"pipeline": fc.pipeline, "source_table": fc.source_table, "output_table": fc.output_table})
        rec.table_versions("bronze", versions)
        fs = flow.featurize(spark, cfg, frames)
        try:
            with stage("features.write") as s:
                version, size, written, by_split = write_feature_table(store, cfg, fs, rec.run_id, versions)
                fs.splits = split_counts(written, flow.head(cfg), fs.classes, by_split)
                s.add(table_version=version, rows=fs.counts["rows_out"], vector_size=size)
            model_path = save_preprocessing(fs.model, cfg, rec.run_id, rec)
            record = FeaturesRecord(rec.run_id, cfg.catalog.path("features"), version, model_path,
                                    f"runs:/{rec.run_id}/{PREPROCESSING_ARTIFACT}", size, versions, flow.kind,
                                    flow.head(cfg), fs.classes, fs.input_shape)
            rec.features_run(record, fc.output_table)
            rec.params({**fs.params, **({"classes": json.dumps(fs.classes)} if fs.classes else {})})
            rec.metrics({"vector_size": size, **({"num_classes": len(fs.classes)} if fs.classes else {}),
                         **flat("", fs.counts), **flat("", fs.splits)})
            rec.report({"counts": fs.counts, "splits": fs.splits, "classes": fs.classes,
                        "input_shape": fs.input_shape, "flow": cfg.flow.model_dump(mode="json")},
                       "features_report.json")
            report = flow.statistics(cfg, fs, rec)
        finally:
            for df in fs.cached:
                df.unpersist()
    LOG.info("features: table %s version %d, %d rows, vector size %d, run %s", record.table_path, version,
             fs.counts["rows_out"], size, rec.run_id)
    return FeaturesResult(record, fs.counts, fs.splits, report, fs.extra.get("names"))
