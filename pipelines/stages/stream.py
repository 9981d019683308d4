"""Streaming scoring: landing files of the source table are scored as they arrive, exactly once, into the same
gold table as batch scoring (structured streaming, file source, checkpointed; trigger availableNow or
processingTime).

Each micro-batch is parsed with the ingest parser (bad rows go to quarantine with their reason), cleaned and
joined like training data, preprocessed by the model's own PipelineModel and scored by its Spark UDF. The batch
is then upserted by natural key into the date partitions it touches, as one MERGE commit (a known key's row
replaced, a new key added). A batch that Spark replays after a failure therefore rewrites the same rows instead
of adding them again, and the checkpoint makes sure no file is missed. Batch scoring may replace the same dates
at the same moment: whichever commit loses the race is retried on the other's version (see score.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore
from pipelines.core.errors import BadInput
from pipelines.core.files import from_spark_path, head
from pipelines.core.logs import LOG, stage
from pipelines.flows.base import Flow
from pipelines.ingest import parse_lines, sniff
from pipelines.stages.inputs import read_sources
from pipelines.stages.score import ResolvedModel, model_udf, predict_batch, resolve_model, upsert_partitions

QUARANTINE_SCHEMA = "source string, source_file string, raw_line string, reason string, run_id string"


class BatchScorer:
    """The foreachBatch function: one micro-batch of raw lines -> quarantine + gold upsert."""

    def __init__(self, spark: SparkSession, cfg: Config, store: DeltaStore, flow: Flow, model: ResolvedModel
                 ) -> None:
        self.spark, self.cfg, self.store, self.flow, self.model = spark, cfg, store, flow, model
        self.udf = model_udf(spark, cfg, model)
        self.frames, _ = read_sources(store, cfg, flow.sources(cfg))
        self.src = cfg.ingest.sources[cfg.features.source_table]
        self.batches: list[dict[str, Any]] = []

    def __call__(self, lines: DataFrame, batch_id: int) -> None:
        cfg = self.cfg
        with stage(f"stream.batch{batch_id}") as s:
            # Spark names files percent-encoded (`file:/a%20b.csv`); headers and quarantine rows use the decoded URI
            # that ingest uses, the line filter Spark's own name.
            files = {r[0]: from_spark_path(r[0]) for r in lines.select("_source_file").distinct().collect()}
            headers, bad_files, readable = {}, [], []
            for spark_path, f in files.items():
                header, why = sniff(head(f, cfg.ingest.sniff_bytes), 1, self.src)
                if why:
                    bad_files.append((self.src.table, f, None, f"unreadable file: {why}", f"stream-{batch_id}"))
                else:
                    headers[f] = header or ""
                    readable.append(spark_path)
            parsed = parse_lines(lines.filter(F.col("_source_file").isin(readable)), self.src, headers).cache()
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
                rows = self.flow.scoring_rows(cfg, self.model, {**self.frames, cfg.features.source_table: facts}, None)
                gold = predict_batch(rows, self.model, self.udf, -1).cache()
                n = gold.count()
                version = upsert_partitions(self.store, cfg.catalog.path("predictions"), gold, rows.key,
                                            rows.partition_by) if n else self.store.version(
                                                cfg.catalog.path("predictions"))
                gold.unpersist()
            finally:
                parsed.unpersist()
            self.batches.append({"batch_id": batch_id, "files": len(files), "rows_scored": n,
                                 "rows_quarantined": n_bad, "gold_version": version})
            s.add(files=len(files), rows_scored=n, rows_quarantined=n_bad, gold_version=version)


def start_stream(spark: SparkSession, cfg: Config, store: DeltaStore, flow: Flow, trigger: str = "available-now",
                 alias: str | None = None, version: int | None = None) -> tuple[StreamingQuery, BatchScorer]:
    """Start the streaming score query; `trigger` is available-now or processing-time. The fact source must be
    a line format (csv, jsonl): each micro-batch of new lines is parsed like ingest parses them."""
    source = cfg.ingest.sources.get(cfg.features.source_table)
    if source is None or source.format not in ("csv", "jsonl"):
        raise BadInput(f"streaming scores new csv/jsonl lines of {cfg.features.source_table!r}; this pipeline's "
                       f"source is {source.format if source else 'not an ingest source'}")
    model = resolve_model(cfg, alias, version)
    scorer = BatchScorer(spark, cfg, store, flow, model)
    checkpoint = cfg.scoring.stream_checkpoint or f"{cfg.workspace}/checkpoints/stream-score"
    lines = (spark.readStream.format("text").option("lineSep", "\n")  # as ingest reads: \r stays in its line
             .option("maxFilesPerTrigger", cfg.scoring.stream_max_files_per_trigger)
             .load(f"{cfg.catalog.landing}/{cfg.scoring.stream_path}")
             .select(F.col("value").cast("binary").alias("_raw"),
                     F.regexp_replace(F.col("_metadata.file_path"), "^file:/(?!/)", "file:///").alias("_source_file")))
    writer = lines.writeStream.foreachBatch(scorer).option("checkpointLocation", checkpoint)
    if trigger == "available-now":
        writer = writer.trigger(availableNow=True)
    elif trigger == "processing-time":
        writer = writer.trigger(processingTime=f"{cfg.scoring.stream_trigger_seconds} seconds")
    else:
        raise ValueError(f"trigger must be available-now or processing-time, got {trigger!r}")
    LOG.info("stream: scoring %s/%s with %s/%s, checkpoint %s", cfg.catalog.landing, cfg.scoring.stream_path,
             model.name, model.version, checkpoint)
    return writer.queryName("stream-score").start(), scorer


def run_stream(spark: SparkSession, cfg: Config, store: DeltaStore, flow: Flow, trigger: str = "available-now",
               timeout_s: float | None = None, alias: str | None = None,
               version: int | None = None) -> list[dict[str, Any]]:
    """Run until the available files are done (available-now) or `timeout_s` passes (processing-time)."""
    query, scorer = start_stream(spark, cfg, store, flow, trigger, alias, version)
    try:
        query.awaitTermination(timeout_s)
        if query.exception() is not None:
            raise RuntimeError(f"streaming query failed: {query.exception()}")
    finally:
        if query.isActive:
            query.stop()
    return scorer.batches
