"""The tabular flow: a fact table (+ optional dimension joins) -> cleaned, labelled, split rows -> a fitted
preprocessing PipelineModel of typed feature groups -> a float vector per row. Binary labels (threshold or
category) or a regression target, split by month, date range or hashed key: all from `cfg.flow`."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.core.config import Config
from pipelines.core.errors import BadInput
from pipelines.core.logs import stage
from pipelines.flows.base import FEATURES, LABEL, FeatureSet, MonitorInputs, ScoringRows, register
from pipelines.flows.tabular import stats
from pipelines.flows.tabular.config import CategoricalGroup, NumericGroup, TabularFlowConf
from pipelines.flows.tabular.nodes import (
    VECTOR_COL,
    build_pipeline,
    check_trainable,
    clean,
    date_column,
    enrich,
    feature_names,
    pipeline_inputs,
    prepare,
    to_feature_table,
)


@register("tabular", TabularFlowConf)
class TabularFlow:
    """Pure steps in nodes.py; this class wires them to the stages' Flow interface."""

    kind = "tabular"

    def sources(self, cfg: Config) -> list[str]:
        return list(dict.fromkeys([cfg.features.source_table, *(j.table for j in cfg.flow.joins)]))

    def head(self, cfg: Config) -> str:
        return "regression" if cfg.flow.label.kind == "regression" else "binary"

    def featurize(self, spark: Any, cfg: Config, frames: dict[str, DataFrame]) -> FeatureSet:
        tf = cfg.flow
        enriched, counts = prepare(frames, cfg.features.source_table, tf)
        with stage("features.fit") as s:
            train = enriched.filter((F.col("split") == "train") & F.col(LABEL).isNotNull())
            check_trainable(train, tf)
            model = build_pipeline(tf).fit(train)
            names = feature_names(model, enriched)
            s.add(stages=len(model.stages), vector_size=len(names))
        table = to_feature_table(model.transform(enriched), tf, self.head(cfg) == "regression")
        params = {"label": tf.label.model_dump_json(), "split": tf.split.model_dump_json(),
                  "scale": tf.scale, "selector": tf.selector.enabled}
        return FeatureSet(table, model, counts, params=params, cached=[enriched],
                          extra={"enriched": enriched, "names": names})

    def statistics(self, cfg: Config, features: FeatureSet, recorder: Any) -> dict[str, Any] | None:
        """feature_names.json, join match rates, and the training split's descriptive statistics and plots."""
        rows = max(features.counts["rows_out"], 1)
        recorder.report({"feature_names": features.extra["names"]}, "feature_names.json")
        recorder.metrics({f"match_rate.{t}": m / rows for t, m in features.counts["matched"].items()})
        if not cfg.features.stats.enabled:
            return None
        with stage("features.stats") as s:
            train = features.extra["enriched"].filter(F.col("split") == "train")
            report = stats.describe(features.model.transform(train), cfg.flow, cfg.features.stats,
                                    self.head(cfg) == "regression")
            with tempfile.TemporaryDirectory() as tmp:
                plots = stats.plot(report, features.splits, Path(tmp), cfg.features.stats.max_plot_columns)
                recorder.artifacts(tmp, "plots")
            recorder.report(report, "stats_report.json")
            s.add(columns=len(report["numeric"]), plots=len(plots))
        return report

    def model_input(self, cfg: Config, store: Any, record: Any, rows: DataFrame) -> tuple[DataFrame, str]:
        return rows, FEATURES

    def serving_meta(self, cfg: Config) -> dict[str, Any]:
        return {}

    def _window(self, cfg: Config, frames: dict[str, DataFrame], dates: list[Any] | None
                ) -> tuple[DataFrame, DataFrame]:
        """(raw fact rows of the dates, the same rows cleaned and enriched like the training rows)."""
        tf = cfg.flow
        facts = frames[cfg.features.source_table]
        if dates is not None:
            date = date_column(tf)
            if date is None:
                raise BadInput("this pipeline's rows have no date: score it without --date")
            facts = facts.filter(date.isin(dates))
        dims = {j.table: frames[j.table] for j in tf.joins}
        return facts, enrich(clean(facts, tf), dims, tf)

    def scoring_rows(self, cfg: Config, model: Any, frames: dict[str, DataFrame], dates: list[Any] | None
                     ) -> ScoringRows:
        """The dates' rows, cleaned and joined like training rows, through the model's own preprocessing."""
        from pyspark.ml.functions import vector_to_array

        tf = cfg.flow
        facts, enriched = self._window(cfg, frames, dates)
        rows_in = facts.count()
        if rows_in == 0 and dates is not None:
            raise BadInput(f"no {cfg.features.source_table} rows on {', '.join(map(str, dates))}")
        preprocessing = model.preprocessing()
        missing = sorted(c for c in pipeline_inputs(preprocessing) if c not in enriched.columns)
        if missing:
            raise BadInput(f"input rows lack the model's input columns {missing}")
        vectors = preprocessing.transform(enriched).withColumn(FEATURES, vector_to_array(VECTOR_COL, "float32"))
        first = vectors.select(F.size(FEATURES).alias("n")).first()
        expected = int(model.meta["vector_size"])
        if first is not None and first["n"] != expected:
            raise BadInput(f"model {model.name}{model.asked} expects feature vectors of size {expected}, "
                           f"its preprocessing produced {first['n']}")
        date = [tf.date_name] if tf.has_date else []
        return ScoringRows(vectors, FEATURES, [*tf.key, *date], list(tf.key), rows_in,
                           tf.date_name if tf.has_date else None)

    def monitoring_inputs(self, cfg: Config, frames: dict[str, DataFrame], dates: list[Any]) -> MonitorInputs:
        """The window's raw inputs, its labels where outcomes are known, and the watched columns."""
        tf = cfg.flow
        numeric = [c for g in tf.groups if isinstance(g, NumericGroup) for c in g.columns]
        categorical = [c for g in tf.groups if isinstance(g, CategoricalGroup) for c in g.columns]
        watched = cfg.monitor.features
        if watched is not None:
            unknown = sorted(set(watched) - set(numeric) - set(categorical))
            if unknown:
                raise BadInput(f"monitor.features: {unknown} are not numeric or categorical model inputs")
            numeric = [c for c in numeric if c in watched]
            categorical = [c for c in categorical if c in watched]
        facts, batch = self._window(cfg, frames, dates)
        labels = clean(facts, tf).select(*tf.key, LABEL)
        return MonitorInputs(batch, list(dict.fromkeys(numeric)), list(dict.fromkeys(categorical)), labels,
                             list(tf.key), F.col(tf.date_name).isin(dates))

    def test_window(self, cfg: Config, table: DataFrame) -> list[Any] | None:
        name = cfg.flow.date_name
        if not cfg.flow.has_date:
            return None
        return sorted(r[0] for r in table.filter(F.col("split") == "test").select(name).distinct().collect())
