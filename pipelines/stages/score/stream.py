"""Streaming scoring: landing files of the source table are scored as they arrive, exactly once, into the same
gold table as batch scoring (structured streaming, checkpointed; trigger availableNow or processingTime).

Only complete files are scored, by the landing zone's rule (pipelines/core/landing.py): Spark's file source has no
such rule (it takes a file as soon as it lists it, then never reads it again), so it does not watch the landing
zone itself. A gate on the driver lists the landing glob and, once a file has settled (writers' names ignored;
size and modification time unchanged for `ingest.settle_s`), admits it by writing a one-line manifest naming it
into `<checkpoint>/settled/` (atomically, under a hidden temporary name first). Spark's file source watches that
folder, so its checkpoint records which files were admitted to which micro-batch, and each micro-batch reads
its admitted files whole, with the ingest reader.

Each micro-batch is parsed with the ingest parser (bad rows go to quarantine with their reason), cleaned and
joined like training data, preprocessed by the model's own PipelineModel and scored by its Spark UDF. The batch
is then upserted by natural key into the date partitions it touches, as one MERGE commit (a known key's row
replaced, a new key added). A batch that Spark replays after a failure (a crash between the batch's writes and
its checkpoint commit) reads the same files again, whole: it rewrites the same gold rows instead of adding them
again, and its quarantine rows, keyed by (query id, batch id), are inserted only if that batch has none yet.
Batch scoring may replace the same dates at the same moment: whichever commit loses the race is retried on the
other's version (see score.py).
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from pipelines.core import files
from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore, merge_rows, retry_on_conflict
from pipelines.core.errors import BadInput
from pipelines.core.landing import Settling, split_writer_names
from pipelines.core.logs import LOG, stage
from pipelines.flows.base import Flow
from pipelines.stages.ingest.parse import bad_rows, parse_files, sniff
from pipelines.stages.inputs import read_sources
from pipelines.stages.score.batch import ResolvedModel, model_udf, predict_batch, resolve_model, upsert_partitions

QUARANTINE_SCHEMA = "source string, source_file string, raw_line string, reason string, run_id string"
VANISHED = "vanished: removed from the landing zone after it was admitted, before it was scored"
NOTHING_READ = "unreadable file: Spark read no lines of it"


class LandingGate:
    """Admits the stream's landing files once complete: one manifest per settled file in `<checkpoint>/settled/`,
    named by the file's URI, so a file is admitted once. A link refused at listing (to nothing, or out of the
    landing zone) is admitted at once with its reason, for the batch to quarantine."""

    def __init__(self, cfg: Config, pattern: str, checkpoint: str) -> None:
        self.zone, self.pattern = cfg.catalog.landing, pattern
        self.folder = files.join(checkpoint, "settled")
        self.settling = Settling(cfg.ingest.settle_s)
        self.deferred: list[str] = []

    @staticmethod
    def manifest(uri: str) -> str:
        return hashlib.sha256(uri.encode()).hexdigest()[:32] + ".json"

    def step(self) -> int:
        """One look at the landing glob: admit the files that have settled; return how many were admitted."""
        listed, _ = split_writer_names(files.list_files(self.zone, self.pattern), self.zone, self.pattern)
        admitted = set(files.listdir(self.folder))
        waiting = [f for f in listed if self.manifest(f.uri) not in admitted]
        ready = [f for f in waiting if f.refused] + self.settling.observe([f for f in waiting if not f.refused])
        for f in ready:
            entry = {"uri": f.uri, "size": f.size, "mtime_ms": f.mtime_ms, "refused": f.refused}
            files.write_atomic(files.join(self.folder, self.manifest(f.uri)), json.dumps(entry).encode())
        self.settling.forget([f.uri for f in ready])
        taken = {f.uri for f in ready}
        self.deferred = [f.uri for f in waiting if f.uri not in taken]
        return len(ready)

    def settle(self) -> None:
        """Admit what is complete now: look, wait `settle_s` if files are still to settle, look again. Files still
        changing then are deferred to a later run (logged)."""
        self.step()
        if self.deferred and self.settling.settle_s > 0:
            time.sleep(self.settling.settle_s)
            self.step()
        if self.deferred:
            LOG.warning("stream: %d landing files deferred: still being written (size or modification time changed "
                        "within ingest.settle_s=%ss), left for a later run: %s", len(self.deferred),
                        self.settling.settle_s, ", ".join(u.rsplit("/", 1)[-1] for u in self.deferred[:5]))


class BatchScorer:
    """The foreachBatch function: one micro-batch of admitted files (manifest lines) -> quarantine + gold upsert."""

    def __init__(self, spark: SparkSession, cfg: Config, store: DeltaStore, flow: Flow, model: ResolvedModel,
                 checkpoint: str) -> None:
        self.spark, self.cfg, self.store, self.flow, self.model = spark, cfg, store, flow, model
        self.udf = model_udf(spark, cfg, model)
        self.frames, _ = read_sources(store, cfg, flow.sources(cfg))
        self.src = cfg.ingest.sources[cfg.features.source_table]
        self.checkpoint = checkpoint
        self.query_id: str | None = None
        self.batches: list[dict[str, Any]] = []

    def run_id(self, batch_id: int) -> str:
        """The micro-batch's id in the quarantine: the query's id (Spark keeps it in the checkpoint's metadata
        file, written before the first batch) and the batch id, which a replay of the batch shares."""
        if self.query_id is None:
            self.query_id = json.loads(files.read_bytes(files.join(self.checkpoint, "metadata")))["id"]
        return f"stream-{self.query_id}-{batch_id}"

    def __call__(self, manifests: DataFrame, batch_id: int) -> None:
        cfg = self.cfg
        run_id = self.run_id(batch_id)
        with stage(f"stream.batch{batch_id}") as s:
            entries = [json.loads(r[0]) for r in manifests.collect()]
            headers, bad_files, readable = {}, [], []
            for e in entries:
                why = e.get("refused") or (None if files.exists(e["uri"]) else VANISHED)
                if not why:
                    header, unreadable = sniff(files.head(e["uri"], cfg.ingest.sniff_bytes), e["size"], self.src)
                    why = f"unreadable file: {unreadable}" if unreadable else None
                if why:
                    bad_files.append((self.src.table, e["uri"], None, why, run_id))
                else:
                    headers[e["uri"]] = header or ""
                    readable.append(e["uri"])
            n = n_bad = 0
            version = self.store.version(cfg.catalog.path("predictions"))
            cached: list[DataFrame] = []
            try:
                if readable:
                    parsed, counts, cached = parse_files(self.spark, self.src, readable, headers)
                    bad_files += [(self.src.table, u, None, NOTHING_READ if files.exists(u) else VANISHED, run_id)
                                  for u in readable if u not in counts]
                    n_bad = self._quarantine(bad_rows(parsed, self.src.table, run_id), bad_files)
                    facts = parsed.filter("_kind = 'ok'").drop("_raw", "_kind", "_reason")
                    rows = self.flow.scoring_rows(cfg, self.model, {**self.frames, cfg.features.source_table: facts},
                                                  None)
                    gold = predict_batch(rows, self.model, self.udf, -1).cache()
                    cached.append(gold)
                    n = gold.count()
                    if n:
                        version = upsert_partitions(self.store, cfg.catalog.path("predictions"), gold, rows.key,
                                                    rows.partition_by)
                else:
                    n_bad = self._quarantine(None, bad_files)
            finally:
                for df in cached:
                    df.unpersist()
            self.batches.append({"batch_id": batch_id, "files": len(entries), "rows_scored": n,
                                 "rows_quarantined": n_bad, "gold_version": version})
            s.add(files=len(entries), rows_scored=n, rows_quarantined=n_bad, gold_version=version)

    def _quarantine(self, bad: DataFrame | None, bad_files: list[tuple]) -> int:
        """The batch's bad rows and unreadable files into quarantine/rows, once per batch; returns the rows."""
        if bad_files:
            extra = self.spark.createDataFrame(bad_files, QUARANTINE_SCHEMA)
            bad = extra if bad is None else bad.unionByName(extra)
        return 0 if bad is None else quarantine_batch(self.store, self.cfg.catalog.path("quarantine_rows"), bad)


def quarantine_batch(store: DeltaStore, path: str, bad: DataFrame) -> int:
    """Add a micro-batch's quarantine rows (QUARANTINE_SCHEMA; `run_id` names the batch) to the table at `path`,
    once: an insert-only MERGE on (source, run_id), so a replay of the batch, whose run id is the same, adds
    nothing, on either engine. Returns the batch's rows."""
    bad = bad.withColumn("quarantined_at", F.lit(datetime.now(UTC))).coalesce(1).cache()
    try:
        n = bad.count()
        if n:
            retry_on_conflict(lambda: merge_rows(store, bad, path, ["source", "run_id"], ["source"], update=False),
                              f"stream: quarantine rows into {path}")
        return n
    finally:
        bad.unpersist()


def start_stream(spark: SparkSession, cfg: Config, store: DeltaStore, flow: Flow, trigger: str = "available-now",
                 alias: str | None = None, version: int | None = None
                 ) -> tuple[StreamingQuery, BatchScorer, LandingGate]:
    """Start the streaming score query; `trigger` is available-now or processing-time. The fact source must be
    a line format (csv, jsonl): each micro-batch's files are parsed like ingest parses them. For available-now the
    gate admits the files complete at the start; for processing-time the caller keeps calling `gate.step()`."""
    source = cfg.ingest.sources.get(cfg.features.source_table)
    if source is None or source.format not in ("csv", "jsonl"):
        raise BadInput(f"streaming scores new csv/jsonl lines of {cfg.features.source_table!r}; this pipeline's "
                       f"source is {source.format if source else 'not an ingest source'}")
    if trigger not in ("available-now", "processing-time"):
        raise ValueError(f"trigger must be available-now or processing-time, got {trigger!r}")
    model = resolve_model(cfg, alias, version)
    checkpoint = cfg.scoring.stream_checkpoint or f"{cfg.workspace}/checkpoints/stream-score"
    pattern = cfg.scoring.stream_path or source.path
    gate = LandingGate(cfg, pattern, checkpoint)
    scorer = BatchScorer(spark, cfg, store, flow, model, checkpoint)
    fs, folder = files.filesystem(gate.folder)
    fs.makedirs(folder, exist_ok=True)
    if trigger == "available-now":
        gate.settle()
    else:
        gate.step()
    manifests = (spark.readStream.format("text")
                 .option("maxFilesPerTrigger", cfg.scoring.stream_max_files_per_trigger).load(gate.folder))
    writer = manifests.writeStream.foreachBatch(scorer).option("checkpointLocation", checkpoint)
    if trigger == "available-now":
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=f"{cfg.scoring.stream_trigger_seconds} seconds")
    LOG.info("stream: scoring %s/%s with %s/%s, checkpoint %s", cfg.catalog.landing, pattern, model.name,
             model.version, checkpoint)
    return writer.queryName("stream-score").start(), scorer, gate


def run_stream(spark: SparkSession, cfg: Config, store: DeltaStore, flow: Flow, trigger: str = "available-now",
               timeout_s: float | None = None, alias: str | None = None,
               version: int | None = None) -> list[dict[str, Any]]:
    """Run until the available files are done (available-now) or `timeout_s` passes (processing-time, admitting
    files as they settle)."""
    query, scorer, gate = start_stream(spark, cfg, store, flow, trigger, alias, version)
    try:
        if trigger == "available-now":
            query.awaitTermination(timeout_s)
        else:
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            look = min(float(cfg.scoring.stream_trigger_seconds), max(1.0, cfg.ingest.settle_s))
            while True:
                wait = look if deadline is None else min(look, deadline - time.monotonic())
                if wait <= 0 or query.awaitTermination(wait):
                    break
                gate.step()
        if query.exception() is not None:
            raise RuntimeError(f"streaming query failed: {query.exception()}")
    finally:
        if query.isActive:
            query.stop()
    return scorer.batches
