"""Tabular flow nodes: pure DataFrame steps driven by the flow's config section (`cfg.flow`, kind tabular).

clean -> enrich (left joins of dimension tables, derived columns) -> assign_split -> build_pipeline (fitted on
train) -> to_feature_table. Scoring and monitoring re-apply clean and enrich to new rows, so a model sees the
same inputs in training and serving.
"""

from __future__ import annotations

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
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from features.cyclical import CyclicalEncoder
from pipelines.core.config import ConfigError
from pipelines.core.logs import LOG, stage
from pipelines.flows.base import FEATURES, LABEL, SPLITS, VECTOR_COL
from pipelines.flows.labels import hash_split
from pipelines.flows.tabular.config import (
    BucketizedGroup,
    CategoricalGroup,
    CyclicalGroup,
    NumericGroup,
    TabularFlowConf,
)

EXCLUDED = "excluded"  # rows in no split (months or dates listed nowhere)
ASSEMBLED_COL = "features__assembled"
# Suffixes of the pipeline's intermediate columns (double underscore: cannot clash with source columns).
IMP, IDX, OHE, BKT, BKT_OHE, CYC = "__imp", "__idx", "__ohe", "__bkt", "__bkt_ohe", "__cyc"


# ---- pure stage functions ------------------------------------------------------------------------------------
def label_column(tf: TabularFlowConf) -> Column:
    """The label from the configured source column: 1/0 by a threshold or a set of values (binary), or the value
    itself (regression); null when the source value is null (no outcome yet: kept, never used to train)."""
    lab = tf.label
    if lab.kind == "regression":
        return F.col(lab.column).cast("double")
    if lab.kind == "threshold":
        src = F.col(lab.column).cast("double")
        return F.when(src.isNull(), None).otherwise((src > lab.threshold).cast("int"))
    src = F.trim(F.col(lab.column).cast("string"))
    return F.when(src.isNull(), None).otherwise(src.isin(*lab.positive).cast("int"))


def date_column(tf: TabularFlowConf) -> Column | None:
    """The row's date: made from (year, month, day) columns, or an existing date column; None when the flow
    has no date (then it splits by hash and scores whole tables)."""
    if tf.date_columns:
        y, m, d = tf.date_columns
        return F.make_date(F.col(y).cast("int"), F.col(m).cast("int"), F.col(d).cast("int"))
    return F.to_date(F.col(tf.date_name)) if tf.has_date else None


def clean(facts: DataFrame, tf: TabularFlowConf) -> DataFrame:
    """Trim strings (blank -> null), add the date and the label, remove duplicates on the natural key.

    A row without an outcome (label source null) keeps a null label; it is not dropped. Of duplicate rows the
    one with an outcome is kept, ties broken by a hash of the other columns, so the choice is deterministic.
    """
    out = facts.withColumns({c: F.col(c).cast("int") for c in tf.date_columns})
    for name, typ in out.dtypes:
        if typ == "string":
            trimmed = F.trim(F.col(name))
            out = out.withColumn(name, F.when(trimmed == "", None).otherwise(trimmed))
    if tf.label.column not in out.columns:
        raise ConfigError(f"flow.label.column: {tf.label.column!r} is not a column of the source ({out.columns})")
    date = date_column(tf)
    if date is not None:
        out = out.withColumn(tf.date_name, date)
    out = out.withColumn(LABEL, label_column(tf))
    if not tf.key:
        return out
    missing = [c for c in tf.key if c not in out.columns]
    if missing:
        raise ConfigError(f"flow.key: columns {missing} are not in the source table ({out.columns})")
    rest = sorted(c for c in out.columns if c not in tf.key)
    # Tie-break on a hash of the whole row: deterministic, and a 2-column sort instead of one over every column.
    order = [F.col(tf.label.column).isNull().asc(), F.xxhash64(*rest).asc()]
    w = Window.partitionBy(*tf.key).orderBy(*order)
    return out.withColumn("_dup_rank", F.row_number().over(w)).filter("_dup_rank = 1").drop("_dup_rank")


def dedupe_dimension(dim: DataFrame, keys: list[str]) -> DataFrame:
    """One row per key of a dimension table (first by all other columns), so a join cannot multiply rows."""
    rest = sorted(c for c in dim.columns if c not in keys)
    w = Window.partitionBy(*keys).orderBy(*[F.col(c).asc_nulls_last() for c in rest])
    return dim.withColumn("_dim_rank", F.row_number().over(w)).filter("_dim_rank = 1").drop("_dim_rank")


def enrich(facts: DataFrame, dims: dict[str, DataFrame], tf: TabularFlowConf) -> DataFrame:
    """Left-join every configured dimension (deduped on its key), add derived columns, cast the inputs.

    Every fact row is kept exactly once; unmatched rows get nulls (imputed by the pipeline) and
    `_has_<table>` = null, so match rates can be counted.
    """
    out = facts
    for j in tf.joins:
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
    for name, expr in tf.derived.items():
        out = out.withColumn(name, F.expr(expr))
    return cast_inputs(out, tf)


def cast_inputs(df: DataFrame, tf: TabularFlowConf) -> DataFrame:
    """Numeric, bucketized and cyclical inputs as double, categorical as string; key and date columns keep theirs."""
    fixed = {*tf.key, *tf.date_columns}
    kinds = {c: "string" if isinstance(g, CategoricalGroup) else "double" for g in tf.groups for c in g.columns}
    missing = [c for c in kinds if c not in df.columns]
    if missing:
        raise ConfigError(f"flow.groups: input columns {missing} do not exist (have {df.columns})")
    return df.withColumns({c: F.col(c).cast(t) for c, t in kinds.items() if c not in fixed})


def assign_split(df: DataFrame, tf: TabularFlowConf) -> DataFrame:
    """`split` = train / validation / test by the month or the date range of the row's date, or by a seeded hash
    of the key; rows in no split get 'excluded' (kept in the table, never trained on)."""
    sp = tf.split
    if sp.by == "hash":
        key = sp.key or tf.key
        if not key:
            raise ConfigError("flow.split: a hash split needs key columns (flow.split.key or flow.key)")
        hashed = df.withColumn("_split_key", F.concat_ws("\u0001", *[F.col(c).cast("string") for c in key]))
        return hash_split(hashed, "_split_key", sp).drop("_split_key")
    if sp.by == "month":
        value = F.month(F.col(tf.date_name))
        member = {name: value.isin(getattr(sp, name)) for name in SPLITS}
    else:
        value = F.col(tf.date_name)
        member = {name: value.between(F.lit(getattr(sp, name)[0]), F.lit(getattr(sp, name)[1])) for name in SPLITS}
    expr = F.when(member["train"], "train").when(member["validation"], "validation").when(member["test"], "test")
    return df.withColumn("split", expr.otherwise(EXCLUDED))


def input_columns(tf: TabularFlowConf) -> list[str]:
    """The raw columns the pipeline reads, in config order, without repeats."""
    return list(dict.fromkeys(c for g in tf.groups for c in g.columns))


def build_pipeline(tf: TabularFlowConf) -> Pipeline:
    """The unfitted preprocessing Pipeline described by the feature groups; its output column is VECTOR_COL.

    Imputer (numeric and bucketized inputs) -> StringIndexer(keep) + OneHotEncoder -> QuantileDiscretizer
    (+ one-hot) -> CyclicalEncoder -> VectorAssembler -> StandardScaler -> optional UnivariateFeatureSelector.
    """
    if not tf.groups:
        raise ConfigError("flow.groups: no feature groups configured")
    leaks = sorted(set(input_columns(tf)) & ({*tf.unknown_at_prediction, tf.label.column}))
    if leaks:
        raise ConfigError(f"flow.groups: {leaks} are not known at prediction time")
    stages: list[Any] = []
    assembled: list[str] = []
    to_impute = [c for g in tf.groups if isinstance(g, NumericGroup | BucketizedGroup) for c in g.columns]
    to_impute = list(dict.fromkeys(to_impute))
    strategy = next((g.impute for g in tf.groups if isinstance(g, NumericGroup)), "median")
    if to_impute:
        stages.append(Imputer(inputCols=to_impute, outputCols=[c + IMP for c in to_impute],
                              strategy=strategy))
    for g in tf.groups:
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
            stages.append(CyclicalEncoder(inputCols=list(g.columns), periods=list(g.columns.values()),
                                          outputCol=name))
            assembled.append(name)
    extra = [tf.scale, tf.selector.enabled]
    out = VECTOR_COL if not any(extra) else ASSEMBLED_COL
    stages.append(VectorAssembler(inputCols=assembled, outputCol=out, handleInvalid="error"))
    if tf.scale:
        scaled = "features__scaled" if tf.selector.enabled else VECTOR_COL
        stages.append(StandardScaler(inputCol=out, outputCol=scaled, withMean=True, withStd=True))
        out = scaled
    if tf.selector.enabled:
        sel = UnivariateFeatureSelector(featuresCol=out, outputCol=VECTOR_COL, labelCol=LABEL,
                                        selectionMode=tf.selector.mode)
        stages.append(sel.setFeatureType("continuous").setLabelType("categorical")
                      .setSelectionThreshold(tf.selector.threshold))
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


def check_trainable(train: DataFrame, tf: TabularFlowConf) -> None:
    """Fail clearly (not with an Imputer stack trace) when the training rows cannot fit the pipeline."""
    numeric = [c for c in input_columns(tf) if dict(train.dtypes).get(c) != "string"]
    row = train.agg(F.count("*").alias("_rows"), *[F.count(c).alias(c) for c in numeric]).first()
    if not row["_rows"]:
        raise ValueError("the train split has no labeled rows: check features.split and the source table")
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


def to_feature_table(transformed: DataFrame, tf: TabularFlowConf, regression: bool = False) -> DataFrame:
    """Table columns: natural key, date, split, label, features (array<float>), raw inputs, passthrough.

    The vector becomes a plain float array (TensorFlow reads it directly); the raw inputs stay so that scoring
    and monitoring can re-apply the PipelineModel to the same rows.
    """
    head = [*tf.key, *([tf.date_name] if tf.has_date else []), "split", LABEL]
    tail = [c for c in dict.fromkeys([*input_columns(tf), *tf.passthrough]) if c not in head]
    missing = [c for c in tf.passthrough if c not in transformed.columns]
    if missing:
        raise ConfigError(f"flow.passthrough: columns {missing} do not exist")
    return transformed.select(
        *head[:-1], F.col(LABEL).cast("double" if regression else "int").alias(LABEL),
        vector_to_array(F.col(VECTOR_COL), "float32").alias(FEATURES), *tail,
    )


def dimension_duplicates(dim: DataFrame, keys: list[str]) -> int:
    """Rows of a dimension table beyond the first for each key (0 when the key is unique)."""
    return int(dim.groupBy(*keys).count().filter("count > 1").agg(F.sum(F.col("count") - 1)).first()[0] or 0)



def row_counts(df: DataFrame, tf: TabularFlowConf) -> dict[str, Any]:
    """Rows, rows without a label, and the fact rows that found a row in each joined table (one job)."""
    row = df.agg(F.count("*").alias("_rows"), F.count(LABEL).alias("_labeled"),
                 *[F.count(F.col(f"_has_{j.table}")).alias(j.table) for j in tf.joins]).first()
    return {"rows": int(row["_rows"]), "no_label": int(row["_rows"] - row["_labeled"]),
            "matched": {j.table: int(row[j.table]) for j in tf.joins}}


def check_dimensions(frames: dict[str, DataFrame], tf: TabularFlowConf) -> dict[str, int]:
    """Duplicate keys per join table: logged (and deduped by `enrich`), or an error with on_duplicates: fail."""
    dups = {}
    for j in tf.joins:
        n = dups[j.table] = dimension_duplicates(frames[j.table].select(*j.keys), j.keys)
        if n and j.on_duplicates == "fail":
            raise ValueError(f"dimension {j.table} has {n} duplicate rows on key {j.keys}; "
                             f"set on_duplicates: dedupe in flow.joins to keep one row per key")
        if n:
            LOG.warning("dimension %s: %d duplicate rows on key %s; keeping one row per key", j.table, n, j.keys)
    return dups


def prepare(frames: dict[str, DataFrame], source: str, tf: TabularFlowConf) -> tuple[DataFrame, dict[str, Any]]:
    """clean -> enrich -> assign_split on the bronze frames, persisted; returns (rows, counts).

    Raises when the joins changed the number of rows (they must not, whatever the dimension data).
    """
    with stage("features.clean") as s:
        facts = frames[source]
        rows_in = facts.count()
        cleaned = clean(facts, tf).persist(StorageLevel.MEMORY_AND_DISK)
        rows = cleaned.count()
        s.add(rows_in=rows_in, duplicates_removed=rows_in - rows)
    try:
        with stage("features.enrich") as s:
            dups = check_dimensions(frames, tf)
            dims = {j.table: frames[j.table] for j in tf.joins}
            enriched = assign_split(enrich(cleaned, dims, tf), tf).persist(StorageLevel.MEMORY_AND_DISK)
            got = row_counts(enriched, tf)
            if got["rows"] != rows:
                enriched.unpersist()
                raise RuntimeError(f"joins changed the number of rows: {rows} -> {got['rows']}")
            s.add(rows=rows, no_label=got["no_label"], **{f"dup_{t}": n for t, n in dups.items()},
                  **{f"match_{t}": f"{m / max(rows, 1):.3f}" for t, m in got["matched"].items()})
    finally:
        cleaned.unpersist()
    counts = {"rows_in": rows_in, "duplicates_removed": rows_in - rows, "rows_out": rows,
              "no_label": got["no_label"], "dimension_duplicates": dups, "matched": got["matched"]}
    return enriched, counts
