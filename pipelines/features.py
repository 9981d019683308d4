"""features: bronze tables -> silver feature table, with one pyspark.ml PipelineModel fitted on train only.

The stage functions (clean, enrich, assign_split, build_pipeline, to_feature_table) are pure DataFrame ->
DataFrame steps driven by the tabular `cfg.flow`, so scoring can re-apply the same cleaning, joins and fitted model to
new rows. `run_features` does the I/O at the edges: it reads bronze at pinned versions, writes the silver table
(a new version per run), saves the PipelineModel under the workspace and records everything in one MLflow run.
"""

from __future__ import annotations

import importlib
import json
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pyspark import StorageLevel
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import (
    Imputer,
    OneHotEncoder,
    QuantileDiscretizer,
    StandardScaler,
    StringIndexer,
    UnivariateFeatureSelector,
    VectorAssembler,
)
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from pipelines.core import files
from pipelines.core.config import (
    BucketizedGroup,
    CategoricalGroup,
    Config,
    ConfigError,
    CyclicalGroup,
    DateRangeSplit,
    HashSplit,
    NumericGroup,
    TabularFlowConf,
)
from pipelines.core.delta import DeltaStore
from pipelines.core.logs import LOG, stage

JOB = "features"
SPLITS = ("train", "validation", "test")
EXCLUDED = "excluded"  # rows whose month (or date) is in no split
LABEL = "label"  # the label column of the table
FEATURES_COL = "features"  # array<float> in the table
VECTOR_COL = "features_vector"  # the PipelineModel's final output (VectorUDT, never stored)
ASSEMBLED_COL = "features__assembled"
# Suffixes of the pipeline's intermediate columns (double underscore: cannot clash with source columns).
IMP, IDX, OHE, BKT, BKT_OHE, CYC = "__imp", "__idx", "__ohe", "__bkt", "__bkt_ohe", "__cyc"
MODEL_ARTIFACT = "preprocessing"


def ensure_features_package() -> None:
    """Make `import features` give the project's transformer package, which PipelineModel.load imports by name.

    A job run as a script (python jobs/x.py, spark-submit jobs/x.py) has jobs/ first on sys.path, where
    jobs/features.py would shadow the `features` package. Import the package once with such folders hidden;
    later imports use the cached package.
    """
    mod = sys.modules.get("features")
    if mod is not None and hasattr(mod, "__path__"):
        return
    sys.modules.pop("features", None)
    saved = list(sys.path)
    sys.path[:] = [p for p in saved if not (Path(p or ".", "features.py").is_file()
                                            and not Path(p or ".", "features", "__init__.py").is_file())]
    try:
        importlib.import_module("features")
    finally:
        sys.path[:] = saved


ensure_features_package()  # at import: scoring and training load PipelineModels after importing this module


def _cyclical_encoder() -> type:
    ensure_features_package()
    from features.cyclical import CyclicalEncoder

    return CyclicalEncoder


# ---- pure stage functions ------------------------------------------------------------------------------------
def label_expr(fc: TabularFlowConf) -> Any:
    """The label from `fc.label.column`: threshold -> 1 when above, category -> 1 when in `positive` (int);
    regression -> the value (double); null when the column is null."""
    lab = fc.label
    src = F.col(lab.column)
    if lab.kind == "threshold":
        value = (src.cast("double") > lab.threshold).cast("int")
    elif lab.kind == "category":
        value = src.cast("string").isin(lab.positive).cast("int")
    else:
        value = src.cast("double")
    return F.when(src.isNull(), None).otherwise(value)


def clean(facts: DataFrame, fc: TabularFlowConf) -> DataFrame:
    """Fix types, add the date and the label, remove duplicates on the natural key.

    A row without an outcome (label column null: cancelled or diverted flight) keeps a null label; it is not
    dropped. Of duplicate rows the one with an outcome is kept, ties broken by a hash of the other columns, so
    the choice is deterministic.
    """
    out = facts
    for c in fc.date_columns:
        out = out.withColumn(c, F.col(c).cast("int"))
    for name, typ in out.dtypes:
        if typ == "string":
            trimmed = F.trim(F.col(name))
            out = out.withColumn(name, F.when(trimmed == "", None).otherwise(trimmed))
    if fc.label.kind != "category":
        out = out.withColumn(fc.label.column, F.col(fc.label.column).cast("double"))
    if fc.date_columns:
        y, m, d = fc.date_columns
        out = out.withColumn(fc.date_name, F.make_date(F.col(y), F.col(m), F.col(d)))
    out = out.withColumn(LABEL, label_expr(fc))
    if not fc.key:
        return out
    missing = [c for c in fc.key if c not in out.columns]
    if missing:
        raise ConfigError(f"flow.key: columns {missing} are not in the fact table ({out.columns})")
    rest = sorted(c for c in out.columns if c not in fc.key)
    # Tie-break on a hash of the whole row: deterministic, and a 2-column sort instead of one over every column.
    order = [F.col(fc.label.column).isNull().asc(), F.xxhash64(*rest).asc()]
    w = Window.partitionBy(*fc.key).orderBy(*order)
    return out.withColumn("_dup_rank", F.row_number().over(w)).filter("_dup_rank = 1").drop("_dup_rank")


def dedupe_dimension(dim: DataFrame, keys: list[str]) -> DataFrame:
    """One row per key of a dimension table (first by all other columns), so a join cannot multiply rows."""
    rest = sorted(c for c in dim.columns if c not in keys)
    w = Window.partitionBy(*keys).orderBy(*[F.col(c).asc_nulls_last() for c in rest])
    return dim.withColumn("_dim_rank", F.row_number().over(w)).filter("_dim_rank = 1").drop("_dim_rank")


def enrich(facts: DataFrame, dims: dict[str, DataFrame], fc: TabularFlowConf) -> DataFrame:
    """Left-join every configured dimension (deduped on its key), add derived columns, cast the inputs.

    Every fact row is kept exactly once; unmatched rows get nulls (imputed by the pipeline) and
    `_has_<table>` = null, so match rates can be counted.
    """
    out = facts
    for j in fc.joins:
        if j.table not in dims:
            raise ConfigError(f"flow.joins: no table {j.table!r} was read")
        dim = dims[j.table]
        missing = [c for c in [*j.keys, *j.columns] if c not in dim.columns]
        if missing:
            raise ConfigError(f"flow.joins[{j.table}]: columns {missing} not in the table {dim.columns}")
        clash = [a for a in j.columns.values() if a in out.columns]
        if clash:
            raise ConfigError(f"flow.joins[{j.table}]: output names {clash} already exist; rename them")
        dim = dedupe_dimension(dim.select(*j.keys, *j.columns), j.keys).select(
            *j.keys, *[F.col(c).alias(a) for c, a in j.columns.items()], F.lit(True).alias(f"_has_{j.table}"))
        out = out.join(dim, on=j.keys, how="left")
    for name, expr in fc.derived.items():
        out = out.withColumn(name, F.expr(expr))
    return cast_inputs(out, fc)


def cast_inputs(df: DataFrame, fc: TabularFlowConf) -> DataFrame:
    """Numeric, bucketized and cyclical inputs as double, categorical as string; key and date columns keep theirs."""
    fixed = {*fc.key, *fc.date_columns}
    kinds = {c: "string" if isinstance(g, CategoricalGroup) else "double" for g in fc.groups for c in g.columns}
    missing = [c for c in kinds if c not in df.columns]
    if missing:
        raise ConfigError(f"flow.groups: input columns {missing} do not exist (have {df.columns})")
    return df.withColumns({c: F.col(c).cast(t) for c, t in kinds.items() if c not in fixed})


def assign_split(df: DataFrame, fc: TabularFlowConf) -> DataFrame:
    """`split` = train / validation / test by the month of the date column (months in no split: 'excluded'), by
    inclusive date ranges (dates in none: 'excluded'), or by a seeded hash of the key."""
    sp = fc.split
    if isinstance(sp, HashSplit):
        value = F.concat_ws("\u0001", *(F.col(c).cast("string") for c in fc.split_key))
        u = (F.abs(F.xxhash64(value, F.lit(sp.seed))) % 1_000_000) / 1_000_000.0
        return df.withColumn("split", F.when(u < sp.test, "test")
                             .when(u < sp.test + sp.validation, "validation").otherwise("train"))
    if isinstance(sp, DateRangeSplit):
        day = F.col(fc.date_name).cast("date")
        expr = F.when(F.lit(False), None)
        for name in SPLITS:
            bounds = getattr(sp, name)
            if bounds:
                expr = expr.when(day.between(F.lit(bounds[0]), F.lit(bounds[1])), name)
        return df.withColumn("split", expr.otherwise(EXCLUDED))
    month = F.month(F.col(fc.date_name))
    expr = F.when(month.isin(sp.train), "train")
    expr = expr.when(month.isin(sp.validation), "validation").when(month.isin(sp.test), "test")
    return df.withColumn("split", expr.otherwise(EXCLUDED))


def input_columns(fc: TabularFlowConf) -> list[str]:
    """The raw columns the pipeline reads, in config order, without repeats."""
    return list(dict.fromkeys(c for g in fc.groups for c in g.columns))


def build_pipeline(fc: TabularFlowConf) -> Pipeline:
    """The unfitted preprocessing Pipeline described by the feature groups; its output column is VECTOR_COL.

    Imputer (numeric and bucketized inputs) -> StringIndexer(keep) + OneHotEncoder -> QuantileDiscretizer
    (+ one-hot) -> CyclicalEncoder -> VectorAssembler -> StandardScaler -> optional UnivariateFeatureSelector.
    """
    if not fc.groups:
        raise ConfigError("flow.groups: no feature groups configured")
    leaks = sorted(set(input_columns(fc)) & ({*fc.post_departure, fc.label.column}))
    if leaks:
        raise ConfigError(f"flow.groups: {leaks} are not known at prediction time")
    stages: list[Any] = []
    assembled: list[str] = []
    to_impute = [c for g in fc.groups if isinstance(g, NumericGroup | BucketizedGroup) for c in g.columns]
    to_impute = list(dict.fromkeys(to_impute))
    strategy = next((g.impute for g in fc.groups if isinstance(g, NumericGroup)), "median")
    if to_impute:
        stages.append(Imputer(inputCols=to_impute, outputCols=[c + IMP for c in to_impute],
                              strategy=strategy))
    for g in fc.groups:
        if isinstance(g, NumericGroup):
            assembled += [c + IMP for c in g.columns]
        elif isinstance(g, CategoricalGroup):
            stages.append(StringIndexer(inputCols=g.columns, outputCols=[c + IDX for c in g.columns],
                                        handleInvalid="keep", stringOrderType=g.order))
            stages.append(OneHotEncoder(inputCols=[c + IDX for c in g.columns],
                                        outputCols=[c + OHE for c in g.columns], handleInvalid="keep"))
            assembled += [c + OHE for c in g.columns]
        elif isinstance(g, BucketizedGroup):
            stages.append(QuantileDiscretizer(inputCols=[c + IMP for c in g.columns],
                                              outputCols=[c + BKT for c in g.columns], numBuckets=g.buckets,
                                              handleInvalid="keep", relativeError=0.001))
            if g.one_hot:
                stages.append(OneHotEncoder(inputCols=[c + BKT for c in g.columns], handleInvalid="keep",
                                            outputCols=[c + BKT_OHE for c in g.columns]))
                assembled += [c + BKT_OHE for c in g.columns]
            else:
                assembled += [c + BKT for c in g.columns]
        elif isinstance(g, CyclicalGroup):
            name = g.name + CYC
            stages.append(_cyclical_encoder()(inputCols=list(g.columns), periods=list(g.columns.values()),
                                          outputCol=name))
            assembled.append(name)
    extra = [fc.scale, fc.selector.enabled]
    out = VECTOR_COL if not any(extra) else ASSEMBLED_COL
    stages.append(VectorAssembler(inputCols=assembled, outputCol=out, handleInvalid="error"))
    if fc.scale:
        scaled = "features__scaled" if fc.selector.enabled else VECTOR_COL
        stages.append(StandardScaler(inputCol=out, outputCol=scaled, withMean=True, withStd=True))
        out = scaled
    if fc.selector.enabled:
        sel = UnivariateFeatureSelector(featuresCol=out, outputCol=VECTOR_COL, labelCol=LABEL,
                                        selectionMode=fc.selector.mode)
        stages.append(sel.setFeatureType("continuous").setLabelType("categorical")
                      .setSelectionThreshold(fc.selector.threshold))
    return Pipeline(stages=stages)


def pipeline_inputs(pipeline: Pipeline | PipelineModel) -> set[str]:
    """Columns a pipeline reads from its input DataFrame (read by some stage, produced by none before it)."""
    stages = pipeline.getStages() if isinstance(pipeline, Pipeline) else pipeline.stages
    produced: set[str] = set()
    reads: set[str] = set()
    for s in stages:
        ins: list[str] = []
        for p in ("inputCol", "featuresCol"):
            if s.hasParam(p) and s.isDefined(s.getParam(p)):
                ins.append(s.getOrDefault(s.getParam(p)))
        if s.hasParam("inputCols") and s.isDefined(s.getParam("inputCols")):
            ins += s.getOrDefault(s.getParam("inputCols"))
        reads |= {c for c in ins if c not in produced}
        if s.hasParam("outputCol") and s.isDefined(s.getParam("outputCol")):
            produced.add(s.getOrDefault(s.getParam("outputCol")))
        if s.hasParam("outputCols") and s.isDefined(s.getParam("outputCols")):
            produced |= set(s.getOrDefault(s.getParam("outputCols")))
    return reads


def check_trainable(train: DataFrame, fc: TabularFlowConf) -> None:
    """Fail clearly (not with an Imputer stack trace) when the training rows cannot fit the pipeline."""
    numeric = [c for c in input_columns(fc) if dict(train.dtypes).get(c) != "string"]
    row = train.agg(F.count("*").alias("_rows"), *[F.count(c).alias(c) for c in numeric]).first()
    if not row["_rows"]:
        raise ValueError("the train split has no labeled rows: check flow.split and the source table")
    empty = [c for c in numeric if row[c] == 0]
    if empty:
        raise ValueError(f"numeric inputs {empty} are null in every training row; drop them from "
                         f"flow.groups or fix the source")


def feature_names(model: PipelineModel, sample: DataFrame) -> list[str]:
    """Readable name of every slot of the final vector (from the assembler's ML attributes; no Spark job)."""
    schema = model.transform(sample.limit(0)).schema
    assembled = ASSEMBLED_COL if ASSEMBLED_COL in schema.fieldNames() else VECTOR_COL
    attrs = schema[assembled].metadata.get("ml_attr", {})
    names = [""] * attrs.get("num_attrs", 0)
    for group in attrs.get("attrs", {}).values():
        for a in group:
            names[a["idx"]] = _pretty(a.get("name", f"f{a['idx']}"))
    selector = model.stages[-1]
    if hasattr(selector, "selectedFeatures"):
        names = [names[i] for i in selector.selectedFeatures]
    return names


def _pretty(raw: str) -> str:
    """carrier__ohe_UA -> carrier=UA; distance__imp -> distance; distance__bkt_ohe_a, b -> distance in [a, b)"""
    for suffix, fmt in ((BKT_OHE + "_", "{} in [{})"), (OHE + "_", "{}={}"), (CYC + "_", "{1}")):
        if suffix in raw:
            col, _, val = raw.partition(suffix)
            return fmt.format(col, val)
    return raw.removesuffix(IMP).removesuffix(BKT)


def to_feature_table(transformed: DataFrame, fc: TabularFlowConf) -> DataFrame:
    """Table columns: natural key, date, split, label (int), features (array<float>), raw inputs, passthrough.

    The vector becomes a plain float array (Petastorm/TensorFlow read it directly); the raw inputs stay so
    that scoring can re-apply the PipelineModel to the same rows.
    """
    head = [*fc.key, *([fc.date_name] if fc.has_date else []), "split", LABEL]
    tail = [c for c in dict.fromkeys([*input_columns(fc), *fc.passthrough]) if c not in head]
    missing = [c for c in fc.passthrough if c not in transformed.columns]
    if missing:
        raise ConfigError(f"flow.passthrough: columns {missing} do not exist")
    return transformed.select(
        *head[:-1], F.col(LABEL).cast("double" if fc.label.kind == "regression" else "int").alias(LABEL),
        vector_to_array(F.col(VECTOR_COL), "float32").alias(FEATURES_COL), *tail,
    )


# ---- I/O at the edges ---------------------------------------------------------------------------------------
def read_bronze(store: DeltaStore, cfg: Config) -> tuple[dict[str, DataFrame], dict[str, int]]:
    """The source and join tables at their pinned versions (latest when unpinned): frames and versions."""
    fc = cfg.features
    names = list(dict.fromkeys([fc.source_table, *(j.table for j in cfg.flow.joins)]))
    unknown = sorted(set(fc.bronze_versions) - set(names))
    if unknown:
        raise ConfigError(f"features.bronze_versions: {unknown} are not read by this job (tables: {names})")
    frames, versions = {}, {}
    for name in names:
        path = cfg.catalog.path(name)
        latest = store.version(path)
        if latest is None:
            raise FileNotFoundError(f"no bronze table {name!r} at {path}: run ingest first")
        version = fc.bronze_versions.get(name, latest)
        if version > latest:
            raise ConfigError(f"features.bronze_versions.{name}: version {version} does not exist "
                              f"(latest is {latest})")
        frames[name], versions[name] = store.read(path, version), version
    return frames, versions


def dimension_duplicates(dim: DataFrame, keys: list[str]) -> int:
    """Rows of a dimension table beyond the first for each key (0 when the key is unique)."""
    return int(dim.groupBy(*keys).count().filter("count > 1").agg(F.sum(F.col("count") - 1)).first()[0] or 0)


@dataclass
class FeaturesRun:
    """What training and scoring need to find a features run's outputs."""

    run_id: str
    table_path: str
    table_version: int
    model_path: str  # where the PipelineModel was saved (PipelineModel.load)
    model_uri: str  # the same model as an MLflow artifact: runs:/<run_id>/preprocessing
    vector_size: int
    bronze_versions: dict[str, int] = field(default_factory=dict)


@dataclass
class FeaturesResult:
    run: FeaturesRun
    counts: dict[str, Any]
    splits: dict[str, dict[str, Any]]
    feature_names: list[str]
    stats: dict[str, Any] | None = None


def _split_counts(df: DataFrame, fc: TabularFlowConf) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """Per split: rows, labeled rows, positives, label rate; plus the matched rows of every join (one job)."""
    label = F.col(LABEL)
    has = [f"_has_{j.table}" for j in fc.joins]
    rows = (df.groupBy("split")
            .agg(F.count("*").alias("rows"), F.count(label).alias("labeled"), F.sum(label).alias("positives"),
                 *[F.count(F.col(h)).alias(h) for h in has])
            .collect())
    splits: dict[str, dict[str, Any]] = {}
    matched = {j.table: 0 for j in fc.joins}
    for r in rows:
        pos = int(r["positives"] or 0)
        splits[r["split"]] = {"rows": r["rows"], "labeled": r["labeled"],
                              "no_label": r["rows"] - r["labeled"], "positives": pos,
                              "label_rate": pos / r["labeled"] if r["labeled"] else None}
        for j in fc.joins:
            matched[j.table] += r[f"_has_{j.table}"]
    return {s: splits[s] for s in (*SPLITS, EXCLUDED) if s in splits}, matched


def check_dimensions(frames: dict[str, DataFrame], fc: TabularFlowConf) -> dict[str, int]:
    """Duplicate keys per join table: logged (and deduped by `enrich`), or an error with on_duplicates: fail."""
    dups = {}
    for j in fc.joins:
        n = dups[j.table] = dimension_duplicates(frames[j.table].select(*j.keys), j.keys)
        if n and j.on_duplicates == "fail":
            raise ValueError(f"dimension {j.table} has {n} duplicate rows on key {j.keys}; "
                             f"set on_duplicates: dedupe in flow.joins to keep one row per key")
        if n:
            LOG.warning("dimension %s: %d duplicate rows on key %s; keeping one row per key", j.table, n, j.keys)
    return dups


def prepare(frames: dict[str, DataFrame], fc: TabularFlowConf, source_table: str
            ) -> tuple[DataFrame, dict[str, Any], dict[str, Any]]:
    """clean -> enrich -> assign_split on the bronze frames, persisted; returns (rows, counts, per-split counts).

    Raises when the joins changed the number of rows (they must not, whatever the dimension data).
    """
    with stage("features.clean") as s:
        facts = frames[source_table]
        rows_in = facts.count()
        cleaned = clean(facts, fc).persist(StorageLevel.MEMORY_AND_DISK)
        rows = cleaned.count()
        s.add(rows_in=rows_in, duplicates_removed=rows_in - rows)
    try:
        with stage("features.enrich") as s:
            dups = check_dimensions(frames, fc)
            dims = {j.table: frames[j.table] for j in fc.joins}
            enriched = assign_split(enrich(cleaned, dims, fc), fc).persist(StorageLevel.MEMORY_AND_DISK)
            rows_out = enriched.count()
            if rows_out != rows:
                enriched.unpersist()
                raise RuntimeError(f"joins changed the number of rows: {rows} -> {rows_out}")
            splits, matched = _split_counts(enriched, fc)
            no_label = sum(v["no_label"] for v in splits.values())
            s.add(rows=rows_out, no_label=no_label, **{f"dup_{t}": n for t, n in dups.items()},
                  **{f"match_{t}": f"{m / max(rows_out, 1):.3f}" for t, m in matched.items()})
    finally:
        cleaned.unpersist()
    counts = {"rows_in": rows_in, "duplicates_removed": rows_in - rows, "rows_out": rows_out,
              "no_label": no_label, "dimension_duplicates": dups, "matched": matched}
    return enriched, counts, splits


def run_features(spark: SparkSession, cfg: Config, store: DeltaStore) -> FeaturesResult:
    """Read bronze -> clean -> enrich -> split -> fit on train -> write silver, recorded as one MLflow run."""
    import mlflow

    from pipelines.core.tracking import job_run

    fc, flow = cfg.features, cfg.flow
    out_path = cfg.catalog.path("features")
    with job_run(cfg, JOB) as active:
        run_id = active.info.run_id
        with stage("features.read") as s:
            frames, versions = read_bronze(store, cfg)
            s.add(**{f"{t}_version": v for t, v in versions.items()})
        mlflow.log_params({"pipeline": fc.pipeline, "source_table": fc.source_table,
                           "output_table": fc.output_table,
                           **{f"bronze_version.{t}": v for t, v in versions.items()},
                           "label": _label_param(flow),
                           **_split_params(flow),
                           "scale": flow.scale, "selector": flow.selector.enabled})
        mlflow.set_tags({f"table_version.bronze.{t}": str(v) for t, v in versions.items()})
        enriched, counts, splits = prepare(frames, flow, fc.source_table)
        try:
            with stage("features.fit") as s:
                train = enriched.filter((F.col("split") == "train") & F.col(LABEL).isNotNull())
                check_trainable(train, flow)
                model = build_pipeline(flow).fit(train)
                names = feature_names(model, enriched)
                s.add(stages=len(model.stages), vector_size=len(names))
            with stage("features.write") as s:
                table = to_feature_table(model.transform(enriched), flow)
                meta = {"run_id": run_id, "job": JOB, "pipeline": fc.pipeline,
                        "bronze_versions": json.dumps(versions, sort_keys=True)}
                version = store.write(table, out_path, "overwrite", metadata=meta)
                written = store.read(out_path, version).count()
                if written != counts["rows_out"]:
                    raise RuntimeError(f"wrote {written} rows to {out_path} but built {counts['rows_out']}")
                s.add(table_version=version, rows=written)
            model_path = save_preprocessing(model, cfg, cfg.features.model_dir, run_id)
            report = _log_stats(model, enriched, cfg, splits) if fc.stats.enabled else None
        finally:
            enriched.unpersist()
        run = FeaturesRun(run_id, out_path, version, model_path, f"runs:/{run_id}/{MODEL_ARTIFACT}",
                          len(names), versions)
        _log_outputs(run, cfg, counts, splits, names)
    return FeaturesResult(run, counts, splits, names, report)


def _label_param(flow: TabularFlowConf) -> str:
    lab = flow.label
    if lab.kind == "threshold":
        return f"{lab.column} > {lab.threshold}"
    if lab.kind == "category":
        return f"{lab.column} in {lab.positive}"
    return lab.column


def _split_params(flow: TabularFlowConf) -> dict[str, str]:
    sp = flow.split
    if isinstance(sp, HashSplit):
        return {"split.by": "hash", "split.validation": str(sp.validation), "split.test": str(sp.test)}
    return {f"split.{s}": ",".join(map(str, getattr(sp, s))) for s in SPLITS}


def _log_stats(model: PipelineModel, enriched: DataFrame, cfg: Config, splits: dict[str, Any]
               ) -> dict[str, Any]:
    """Describe the training split and log stats_report.json and plots/*.png to the active run."""
    import mlflow

    from pipelines import stats

    with stage("features.stats") as s:
        report = stats.describe(model.transform(enriched.filter(F.col("split") == "train")), cfg.flow,
                                cfg.features.stats)
        with tempfile.TemporaryDirectory() as tmp:
            plots = stats.plot(report, splits, Path(tmp), cfg.features.stats.max_plot_columns)
            mlflow.log_artifacts(tmp, "plots")
        mlflow.log_dict(report, "stats_report.json")
        s.add(columns=len(report["numeric"]), plots=len(plots))
    return report


def _log_outputs(run: FeaturesRun, cfg: Config, counts: dict[str, Any], splits: dict[str, Any],
                 names: list[str]) -> None:
    """Tags training looks up (table path and version, model location), metrics and the JSON reports."""
    import mlflow

    fc = cfg.features
    mlflow.set_tags({"feature_table": fc.output_table, "feature_table_path": run.table_path,
                     "feature_table_version": str(run.table_version), "preprocessing_path": run.model_path,
                     "preprocessing_artifact": MODEL_ARTIFACT, "pipeline": fc.pipeline,
                     "vector_size": str(run.vector_size)})
    metrics = {k: counts[k] for k in ("rows_in", "duplicates_removed", "rows_out", "no_label")}
    metrics["vector_size"] = run.vector_size
    for sp, v in splits.items():
        metrics.update({f"{sp}.rows": v["rows"], f"{sp}.labeled": v["labeled"]})
        if v["label_rate"] is not None:
            metrics[f"{sp}.label_rate"] = v["label_rate"]
    metrics.update({f"match_rate.{t}": m / max(counts["rows_out"], 1) for t, m in counts["matched"].items()})
    mlflow.log_metrics(metrics)
    mlflow.log_dict({"run": asdict(run), "counts": counts, "splits": splits,
                     "config": {**fc.model_dump(mode="json"), "flow": cfg.flow.model_dump(mode="json")}},
                    "features_report.json")
    mlflow.log_dict({"feature_names": names}, "feature_names.json")
    LOG.info("features: table %s version %d, %d rows, vector size %d, run %s", run.table_path,
             run.table_version, counts["rows_out"], run.vector_size, run.run_id)


def save_preprocessing(model: PipelineModel, cfg: Config, model_dir: str | None, run_id: str) -> str:
    """Save the fitted PipelineModel under `model_dir` (default: the workspace's models/preprocessing), one folder
    per run, and log it as the run's `preprocessing` artifact (through a local copy from a remote file system)."""
    import mlflow

    base = model_dir or f"{cfg.workspace.rstrip('/')}/models/preprocessing"
    path = f"{base.rstrip('/')}/{run_id}"
    model.write().overwrite().save(path)
    if "://" in path and not path.startswith("file://"):  # hdfs:// and object stores: through a local copy
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifacts(files.copy_to_local(path, tmp), MODEL_ARTIFACT)
    else:
        mlflow.log_artifacts(path.removeprefix("file://"), MODEL_ARTIFACT)
    return path


# ---- lookups for training and scoring -----------------------------------------------------------------------
def features_run(cfg: Config, run_id: str) -> FeaturesRun:
    """The outputs of one features run, read from its MLflow tags and params."""
    import mlflow

    from pipelines.core.tracking import configure_mlflow

    configure_mlflow(cfg)
    try:
        r = mlflow.get_run(run_id)
    except Exception as e:
        raise LookupError(f"no MLflow run {run_id}: {e}") from e
    tags = r.data.tags
    if tags.get("job") != JOB or "feature_table_version" not in tags:
        raise LookupError(f"run {run_id} is not a finished features run")
    versions = {k[len("bronze_version."):]: int(v) for k, v in r.data.params.items()
                if k.startswith("bronze_version.")}
    return FeaturesRun(run_id, tags["feature_table_path"], int(tags["feature_table_version"]),
                       tags["preprocessing_path"], f"runs:/{run_id}/{tags['preprocessing_artifact']}",
                       int(tags["vector_size"]), versions)


def latest_features_run(cfg: Config) -> FeaturesRun:
    """The newest finished features run that wrote this config's feature table."""
    import mlflow

    from pipelines.core.tracking import configure_mlflow

    exp = configure_mlflow(cfg)
    path = cfg.catalog.path("features").replace("'", "\\'")
    runs = mlflow.search_runs(
        experiment_ids=[exp], output_format="list", max_results=1, order_by=["attributes.start_time DESC"],
        filter_string=f"tags.job = '{JOB}' and attributes.status = 'FINISHED' and "
                      f"tags.feature_table_path = '{path}'",
    )
    if not runs:
        raise LookupError(f"no finished features run for {path}: run `spark-submit.sh features` first")
    return features_run(cfg, runs[0].info.run_id)


def load_preprocessing(run: FeaturesRun) -> PipelineModel:
    """The run's fitted PipelineModel: from the saved path, or downloaded from MLflow when that is gone."""
    import mlflow

    ensure_features_package()
    local = run.model_path.removeprefix("file://")
    if "://" in local or Path(local).exists():
        return PipelineModel.load(run.model_path)
    dst = tempfile.mkdtemp(prefix="preprocessing-")
    return PipelineModel.load(Path(mlflow.artifacts.download_artifacts(run.model_uri, dst_path=dst)).as_uri())


def read_feature_table(store: DeltaStore, run: FeaturesRun) -> DataFrame:
    """The feature table exactly as that run wrote it (time travel to its version)."""
    return store.read(run.table_path, run.table_version)
