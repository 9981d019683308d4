"""Streaming scoring: landing files of the source table are scored as they arrive, exactly once, into the same
gold table as batch scoring (structured streaming, file source, checkpointed; trigger availableNow or
processingTime).

Each micro-batch is parsed with the ingest parser (bad rows go to quarantine with their reason), cleaned and
joined like training data, preprocessed by the model's own PipelineModel and scored by its Spark UDF. The batch
is then upserted by natural key into the date partitions it touches: those partitions are rewritten as
(existing rows not in the batch) + (batch rows) in one commit. A batch that Spark replays after a failure
therefore rewrites the same rows instead of adding them again, and the checkpoint makes sure no file is missed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore
from pipelines.core.files import head
from pipelines.core.logs import LOG, stage
from pipelines.features import clean, enrich, read_bronze
from pipelines.ingest import parse_lines, sniff
from pipelines.scoring import ResolvedModel, check_signature, load_model_parts, predict, resolve_model

QUARANTINE_SCHEMA = "source string, source_file string, raw_line string, reason string, run_id string"


def upsert_partitions(store: DeltaStore, path: str, rows: DataFrame, key: list[str], date_col: str) -> int | None:
    """Replace the date partitions `rows` touches with (old rows whose key is not in `rows`) + `rows`."""
    dates = [r[0] for r in rows.select(date_col).distinct().collect()]
    if not dates:
        return store.version(path)
    if store.exists(path):
        kept = store.read(path).filter(F.col(date_col).isin(dates)).join(rows.select(*key), on=key, how="left_anti")
        rows = kept.unionByName(rows.select(*kept.columns))
    return store.write(rows, path, "overwrite", [date_col], replace_partitions=[{date_col: d.isoformat()}
                                                                                 for d in dates])


class BatchScorer:
    """The foreachBatch function: one micro-batch of raw lines -> quarantine + gold upsert."""

    def __init__(self, spark: SparkSession, cfg: Config, store: DeltaStore, model: ResolvedModel) -> None:
        self.spark, self.cfg, self.store, self.model = spark, cfg, store, model
        self.preprocessing, self.udf = load_model_parts(spark, cfg, model)
        self.frames, self.versions = read_bronze(store, cfg)
        self.src = cfg.ingest.sources[cfg.features.source_table]
        self.batches: list[dict[str, Any]] = []

    def __call__(self, lines: DataFrame, batch_id: int) -> None:
        fc, cfg = self.cfg.flow, self.cfg
        with stage(f"stream.batch{batch_id}") as s:
            files = [r[0] for r in lines.select("_source_file").distinct().collect()]
            headers, bad_files = {}, []
            for f in files:
                header, why = sniff(head(f, cfg.ingest.sniff_bytes), 1, self.src)
                if why:
                    bad_files.append((self.src.table, f, None, f"unreadable file: {why}", f"stream-{batch_id}"))
                else:
                    headers[f] = header or ""
            parsed = parse_lines(lines.filter(F.col("_source_file").isin(list(headers))), self.src, headers).cache()
            try:
                bad = parsed.filter("_kind = 'bad'").select(
                    F.lit(self.src.table).alias("source"), F.col("_source_file").alias("source_file"),
                    F.col("_raw").alias("raw_line"), F.col("_reason").alias("reason"),
                    F.lit(f"stream-{batch_id}").alias("run_id"))
                if bad_files:
                    bad = bad.unionByName(self.spark.createDataFrame(bad_files, QUARANTINE_SCHEMA))
                bad = bad.withColumn("quarantined_at", F.lit(datetime.now(UTC)))
                n_bad = bad.count()
                if n_bad:
                    store_path = cfg.catalog.path("quarantine_rows")
                    self.store.write(bad.coalesce(1), store_path, "append", ["source"])
                facts = parsed.filter("_kind = 'ok'").drop("_raw", "_kind", "_reason")
                dims = {j.table: self.frames[j.table] for j in fc.joins}
                enriched = enrich(clean(facts, fc), dims, fc)
                check_signature(enriched, self.preprocessing, self.model)
                gold = predict(enriched, self.preprocessing, self.udf, self.model, cfg, -1).cache()
                n = gold.count()
                version = upsert_partitions(self.store, cfg.catalog.path("predictions"), gold, fc.key,
                                            fc.date_name)
                gold.unpersist()
            finally:
                parsed.unpersist()
            self.batches.append({"batch_id": batch_id, "files": len(files), "rows_scored": n,
                                 "rows_quarantined": n_bad, "gold_version": version})
            s.add(files=len(files), rows_scored=n, rows_quarantined=n_bad, gold_version=version)


def stream_path(cfg: Config) -> str:
    """The landing glob the stream watches: scoring.stream_path, else the files of the source table's source."""
    if cfg.scoring.stream_path:
        return cfg.scoring.stream_path
    table = cfg.features.source_table
    paths = [s.path for s in cfg.ingest.sources.values() if s.table == table]
    if not paths:
        raise ValueError(f"scoring.stream_path: unset, and no ingest source feeds {table!r}")
    return paths[0]


def start_stream(spark: SparkSession, cfg: Config, store: DeltaStore, trigger: str = "available-now",
                 alias: str | None = None, version: int | None = None) -> tuple[StreamingQuery, BatchScorer]:
    """Start the streaming score query; `trigger` is available-now or processing-time."""
    model = resolve_model(cfg, alias, version)
    scorer = BatchScorer(spark, cfg, store, model)
    checkpoint = cfg.scoring.stream_checkpoint or f"{cfg.workspace}/checkpoints/stream-score"
    lines = (spark.readStream.format("text")
             .option("maxFilesPerTrigger", cfg.scoring.stream_max_files_per_trigger)
             .load(f"{cfg.catalog.landing}/{stream_path(cfg)}")
             .select(F.col("value").cast("binary").alias("_raw"),
                     F.regexp_replace(F.col("_metadata.file_path"), "^file:/(?!/)", "file:///").alias("_source_file")))
    writer = lines.writeStream.foreachBatch(scorer).option("checkpointLocation", checkpoint)
    if trigger == "available-now":
        writer = writer.trigger(availableNow=True)
    elif trigger == "processing-time":
        writer = writer.trigger(processingTime=f"{cfg.scoring.stream_trigger_seconds} seconds")
    else:
        raise ValueError(f"trigger must be available-now or processing-time, got {trigger!r}")
    LOG.info("stream: scoring %s/%s with %s/%s, checkpoint %s", cfg.catalog.landing, stream_path(cfg),
             model.name, model.version, checkpoint)
    return writer.queryName("stream-score").start(), scorer


def run_stream(spark: SparkSession, cfg: Config, store: DeltaStore, trigger: str = "available-now",
               timeout_s: float | None = None, alias: str | None = None,
               version: int | None = None) -> list[dict[str, Any]]:
    """Run until the available files are done (available-now) or `timeout_s` passes (processing-time)."""
    query, scorer = start_stream(spark, cfg, store, trigger, alias, version)
    try:
        query.awaitTermination(timeout_s)
        if query.exception() is not None:
            raise RuntimeError(f"streaming query failed: {query.exception()}")
    finally:
        if query.isActive:
            query.stop()
    return scorer.batches
