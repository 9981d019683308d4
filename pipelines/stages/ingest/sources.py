"""One source's ingestion: its new files parsed (or decoded, for images) into bronze and quarantine, with
per-file counts; files that vanish before they are read are reported, never recorded as handled."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipelines.core.config import Config, SourceConf
from pipelines.core.delta import DeltaStore
from pipelines.core.files import FileInfo, exists
from pipelines.core.logs import LOG, stage
from pipelines.core.tracking import git_commit
from pipelines.stages.ingest.deliveries import (
    VANISHED,
    Deliveries,
    FileResult,
    Landed,
    SourceResult,
    choose_new,
    quarantined_file,
)
from pipelines.stages.ingest.images import ingest_image_files, split_by_filter
from pipelines.stages.ingest.parse import bad_rows, parse_files, sniff


def ingest_source(
    spark: SparkSession, cfg: Config, store: DeltaStore, name: str, src: SourceConf, run_id: str,
    seen: Deliveries, landed: Landed,
) -> SourceResult:
    """Ingest the new complete files of one source (as list_landed found them); write bronze and quarantine;
    return per-file counts, and the files ignored, deferred and vanished."""
    result = SourceResult(name, ignored_files=len(landed.ignored), deferred=[f.uri for f in landed.deferred],
                          vanished=[_vanished(f) for f in landed.vanished])
    with stage(f"ingest.{name}") as s:
        files = landed.files
        if src.format == "image":
            files, ignored = split_by_filter(files, src.glob_filter)
            result.ignored_files += len(ignored)
            if ignored:
                LOG.warning("%s: %d files ignored by glob filter %r: %s", name, len(ignored), src.glob_filter,
                            ", ".join(f.uri.rsplit("/", 1)[-1] for f in ignored[:5]))
        chosen = choose_new(files, seen, name, 0 if src.format == "image" else cfg.ingest.sniff_bytes)
        result.files.extend(chosen.quarantined)
        result.vanished.extend(chosen.vanished)
        result.skipped_files = len(files) - len(chosen.new) - len(chosen.quarantined) - len(chosen.vanished)
        if src.format == "image":
            _ingest_images(spark, cfg, store, name, src, run_id, chosen.new, result)
        else:
            headers: dict[str, str] = {}
            readable: list[FileInfo] = []
            for f in chosen.new:
                header, why = sniff(chosen.heads[f.uri], f.size, src)
                if why:
                    result.files.append(quarantined_file(f, why))
                else:
                    headers[f.uri] = header or ""
                    readable.append(f)
            if readable:
                _ingest_readable(spark, cfg, store, name, src, run_id, readable, headers, result)
        _set_hashes(result, chosen.hashes)
        s.add(files_new=len(chosen.new), files_skipped=result.skipped_files, files_ignored=result.ignored_files,
              files_deferred=len(result.deferred), files_vanished=len(result.vanished),
              files_quarantined=result.files_quarantined, rows_in=result.rows_in, rows_ok=result.rows_ok,
              rows_quarantined=result.rows_quarantined)
    return result


def _set_hashes(result: SourceResult, hashes: dict[str, str]) -> None:
    for f in result.files:
        f.sha256 = f.sha256 or hashes.get(f.file)


def _vanished(f: FileInfo) -> FileResult:
    LOG.warning("%s: %s", f.uri, VANISHED)
    return FileResult(f.uri, f.size, f.mtime_ms, "vanished", VANISHED)


def _present(files: list[FileInfo], result: SourceResult) -> list[FileInfo]:
    """The files still there right before Spark reads them; the others are reported vanished (Spark fails a
    whole read that names a missing file)."""
    there = [f for f in files if exists(f.uri)]
    result.vanished += [_vanished(f) for f in files if f not in there]
    return there


def _ingest_images(spark: SparkSession, cfg: Config, store: DeltaStore, name: str, src: SourceConf, run_id: str,
                   files: list[FileInfo], result: SourceResult) -> None:
    """One row per image file: decodable ones to bronze, the others quarantined as files with the reason."""
    status: dict[str, str | None] = {f.uri: "empty file" for f in files if f.size == 0}  # binaryFile skips them
    readable = _present([f for f in files if f.size > 0], result)
    if readable:
        decoded, result.table_version = ingest_image_files(spark, cfg, store, src, run_id, readable)
        status |= decoded
    for f in files:
        if f.uri not in status:
            if f in readable:
                _unread(name, f, result)
            continue
        reason = status[f.uri]
        result.files.append(FileResult(f.uri, f.size, f.mtime_ms, "quarantined" if reason else "ingested", reason,
                                       1, 0 if reason else 1, 1 if reason else 0))


def _unread(name: str, f: FileInfo, result: SourceResult) -> None:
    """Spark read nothing of a listed file: it vanished after the listing, else the run must fail rather than
    record the file as handled."""
    if exists(f.uri):
        raise RuntimeError(f"{name}: no lines were read back for {f.uri}; refusing to record it as ingested")
    result.vanished.append(_vanished(f))


def _ingest_readable(
    spark: SparkSession, cfg: Config, store: DeltaStore, name: str, src: SourceConf, run_id: str,
    files: list[FileInfo], headers: dict[str, str], result: SourceResult,
) -> None:
    files = _present(files, result)
    if not files:
        return
    parsed, counts, cached = parse_files(spark, src, [f.uri for f in files], headers)
    try:
        now = datetime.now(UTC)
        for f in files:
            c = counts.get(f.uri, {})
            if not c or (src.header and not c.get("header")):
                _unread(name, f, result)
                continue
            ok, bad = c.get("ok", 0), c.get("bad", 0)
            result.files.append(FileResult(f.uri, f.size, f.mtime_ms, "ingested", None, ok + bad, ok, bad))
        rows_ok = sum(c.get("ok", 0) for c in counts.values())
        good = (parsed.filter(F.col("_kind") == "ok").drop("_raw", "_kind", "_reason")
                .withColumn("_run_id", F.lit(run_id)))
        if src.partition_by:
            good = good.repartition(*src.partition_by)
        else:
            good = good.repartition(max(1, math.ceil(rows_ok / cfg.storage.max_records_per_file)))
        table = cfg.catalog.path(src.table)
        result.table_version = store.write(good, table, "append", src.partition_by,
                                            metadata={"run_id": run_id, "git_commit": git_commit()})
        written = store.read(table, result.table_version).filter(F.col("_run_id") == run_id).count()
        if written != rows_ok:
            raise RuntimeError(f"{name}: wrote {written} rows to bronze but parsed {rows_ok} good rows")
        bad = bad_rows(parsed, name, run_id).withColumn("quarantined_at", F.lit(now)).coalesce(1)
        if result.rows_quarantined:
            store.write(bad, cfg.catalog.path("quarantine_rows"), "append", ["source"], metadata={"run_id": run_id})
    finally:
        for df in cached:
            df.unpersist()
