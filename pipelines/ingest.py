"""ingest: landing files -> bronze Delta tables, with explicit schemas, exactly-once file pick-up and quarantine.

Every landed line is accounted for: a data line is either written to bronze or quarantined with its reason, so
rows_in == rows_ok + rows_quarantined per file. A file that cannot be read at all is quarantined as a file.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.core.config import Config, SourceConf
from pipelines.core.delta import DeltaStore
from pipelines.core.errors import BadInput
from pipelines.core.failpoints import pause
from pipelines.core.files import FileInfo, head, list_files
from pipelines.core.logs import LOG, stage
from pipelines.ingest_images import ingest_image_files, split_by_filter

META_COLS = ["_source_file", "_raw", "_kind", "_reason"]
OTHER_DELIMITERS = [";", "\t", "|", ","]
INT_RANGE = {"int": (-(2**31), 2**31 - 1), "bigint": (-(2**63), 2**63 - 1)}
PANDAS_INT = {"int": "Int32", "bigint": "Int64"}
LOG_SCHEMA = (
    "run_id string, source string, file string, size bigint, mtime_ms bigint, status string, reason string, "
    "rows_in bigint, rows_ok bigint, rows_quarantined bigint, ingested_at timestamp"
)


@dataclass
class FileResult:
    file: str
    size: int
    mtime_ms: int
    status: str  # ingested | quarantined
    reason: str | None = None
    rows_in: int = 0
    rows_ok: int = 0
    rows_quarantined: int = 0


@dataclass
class SourceResult:
    source: str
    files: list[FileResult] = field(default_factory=list)
    skipped_files: int = 0
    ignored_files: int = 0
    table_version: int | None = None

    @property
    def rows_in(self) -> int:
        return sum(f.rows_in for f in self.files)

    @property
    def rows_ok(self) -> int:
        return sum(f.rows_ok for f in self.files)

    @property
    def rows_quarantined(self) -> int:
        return sum(f.rows_quarantined for f in self.files)

    @property
    def files_quarantined(self) -> int:
        return sum(f.status == "quarantined" for f in self.files)


# ---- driver side: whole-file checks ------------------------------------------------------------------------------
def _normalize(line: str) -> str:
    return line.lstrip("\ufeff").rstrip("\r")


def sniff(data: bytes, size: int, src: SourceConf) -> tuple[str | None, str | None]:
    """Check a file's first bytes: return (header line, None) when readable, else (None, reason)."""
    if size == 0 or not data:
        return None, "empty file"
    if b"\x00" in data:
        return None, "binary file: contains NUL bytes"
    first = data.split(b"\n", 1)[0]
    try:
        line = _normalize(first.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not a UTF-8 text file: first line does not decode"
    if src.format == "jsonl":
        try:
            first_obj = json.loads(line)
        except json.JSONDecodeError as e:
            return None, f"not JSON lines: first line is not JSON ({e.msg})"
        return ("", None) if isinstance(first_obj, dict) else (None, "not JSON lines: first line is not an object")
    if not src.header:
        return "", None
    try:
        names = [n.strip().lower() for n in next(csv.reader([line], delimiter=src.delimiter))]
    except (csv.Error, StopIteration) as e:
        return None, f"unreadable header: {e}"
    expected = [c.lower() for c in src.columns]
    if names == expected:
        return line, None
    if len(names) == 1:
        for d in OTHER_DELIMITERS:
            if d != src.delimiter and line.count(d) >= len(expected) - 1:
                return None, f"wrong delimiter: expected {src.delimiter!r}, file uses {d!r}"
    return None, f"header mismatch: expected {expected}, got {names[:len(expected) + 3]}"


# ---- executor side: line parsing ---------------------------------------------------------------------------------
def _convert(values: pd.Series, typ: str, ts_format: str) -> tuple[pd.Series, np.ndarray]:
    """Convert non-null strings to `typ`; return (typed series, mask of values that did not parse)."""
    present = values.notna().to_numpy()
    if typ == "string":
        return values, np.zeros(len(values), dtype=bool)
    if typ in ("int", "bigint", "double", "float"):
        nums = pd.to_numeric(values.str.strip(), errors="coerce")
        failed = present & nums.isna().to_numpy()
        if typ in INT_RANGE:
            lo, hi = INT_RANGE[typ]
            arr = nums.to_numpy(dtype=float, na_value=np.nan)
            with np.errstate(invalid="ignore"):
                bad = ~np.isnan(arr) & ((np.mod(arr, 1) != 0) | (arr < lo) | (arr > hi))
            failed |= bad
            nums = nums.where(~bad)
            return nums.round().astype(PANDAS_INT[typ]), failed
        return nums.astype("float64" if typ == "double" else "float32"), failed
    if typ == "boolean":
        mapped = values.str.strip().str.lower().map({"true": True, "false": False, "1": True, "0": False})
        return mapped.astype("boolean"), present & mapped.isna().to_numpy()
    if typ == "date":
        parsed = pd.to_datetime(values, format="%Y-%m-%d", errors="coerce")
        return parsed.dt.date, present & parsed.isna().to_numpy()
    parsed = pd.to_datetime(values, format=ts_format, utc=True, errors="coerce")
    return parsed, present & parsed.isna().to_numpy()


def _json_fields(line: str, names: list[str]) -> list[str | None] | str:
    """A JSON-lines record as strings in declared column order (absent keys are null), or the reason it is bad."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return f"invalid JSON: {e.msg} at column {e.colno}"
    if not isinstance(obj, dict):
        return f"JSON line is not an object but {type(obj).__name__}"
    out: list[str | None] = []
    for name in names:
        v = obj.get(name)
        if isinstance(v, bool):
            v = str(v).lower()
        elif isinstance(v, dict | list):
            v = json.dumps(v)
        out.append(None if v is None else str(v))
    return out


def parse_batch(raw: pd.Series, files: pd.Series, src: SourceConf, headers: dict[str, str]) -> pd.DataFrame:
    """Parse raw CSV lines (bytes) into typed columns; each line gets a kind (ok/bad/header/blank) and a reason."""
    n = len(raw)
    names = list(src.columns)
    cells: list[list[str | None]] = [[None] * n for _ in names]
    text: list[str] = [""] * n
    kind = np.array(["ok"] * n, dtype=object)
    reason: list[str | None] = [None] * n
    for i, (b, f) in enumerate(zip(raw, files, strict=True)):
        try:
            line = _normalize(bytes(b).decode("utf-8"))
        except UnicodeDecodeError:
            text[i], kind[i], reason[i] = bytes(b).decode("utf-8", "replace"), "bad", "bad encoding: not valid UTF-8"
            continue
        text[i] = line
        if src.header and line == headers.get(f):
            kind[i] = "header"
            continue
        if not line.strip():
            kind[i] = "blank"
            continue
        if src.format == "jsonl":
            fields_or_reason = _json_fields(line, names)
            if isinstance(fields_or_reason, str):
                kind[i], reason[i] = "bad", fields_or_reason
                continue
            for j, v in enumerate(fields_or_reason):
                cells[j][i] = v
            continue
        try:
            fields = next(csv.reader([line], delimiter=src.delimiter, strict=True))
        except csv.Error as e:
            kind[i], reason[i] = "bad", f"malformed quoting: {e}"
            continue
        if len(fields) != len(names):
            kind[i], reason[i] = "bad", f"wrong field count: expected {len(names)}, got {len(fields)}"
            continue
        for j, v in enumerate(fields):
            cells[j][i] = None if v in src.null_values else v
    out: dict[str, pd.Series] = {}
    for j, (name, typ) in enumerate(src.columns.items()):
        typed, failed = _convert(pd.Series(cells[j], dtype=object), typ, src.timestamp_format)
        for i in np.flatnonzero(failed & (kind == "ok")):
            kind[i], reason[i] = "bad", f"unparsable {typ} in column {name}: {cells[j][i]!r}"
        out[name] = typed
    frame = pd.DataFrame(out)
    frame["_source_file"] = files.to_numpy()
    frame["_raw"] = text
    frame["_kind"] = kind
    frame["_reason"] = reason
    return frame


def parse_lines(lines: DataFrame, src: SourceConf, headers: dict[str, str]) -> DataFrame:
    """Lines (`_raw` binary, `_source_file`) -> typed columns plus `_source_file`, `_raw`, `_kind`, `_reason`."""
    schema = ", ".join(f"`{c}` {t}" for c, t in src.columns.items())
    schema += ", _source_file string, _raw string, _kind string, _reason string"

    def fn(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            yield parse_batch(pdf["_raw"], pdf["_source_file"], src, headers)

    return lines.mapInPandas(fn, schema)


def read_lines(spark: SparkSession, files: list[str]) -> DataFrame:
    """Raw lines as bytes (so bad encodings survive to be reported) with the file each came from.

    Spark names local files file:/path; they are normalized to file:///path, the form the file listing uses.
    """
    path = F.regexp_replace(F.col("_metadata.file_path"), "^file:/(?!/)", "file:///")
    return spark.read.text(files).select(F.col("value").cast("binary").alias("_raw"), path.alias("_source_file"))


# ---- orchestration ---------------------------------------------------------------------------------------------------
def ingested_files(store: DeltaStore, log_path: str) -> set[tuple[str, int, int]]:
    """(file, size, mtime) of every delivery already handled, ingested or quarantined."""
    if not store.exists(log_path):
        return set()
    rows = store.read(log_path).select("file", "size", "mtime_ms").collect()
    return {(r.file, r.size, r.mtime_ms) for r in rows}


def ingest_source(
    spark: SparkSession, cfg: Config, store: DeltaStore, name: str, src: SourceConf, run_id: str,
    seen: set[tuple[str, int, int]],
) -> SourceResult:
    """Ingest the new files of one source; write bronze and quarantine; return per-file counts."""
    result = SourceResult(name)
    with stage(f"ingest.{name}") as s:
        landed = list_files(cfg.catalog.landing, src.path)
        if src.format == "image":
            landed, ignored = split_by_filter(landed, src.glob_filter)
            result.ignored_files = len(ignored)
            if ignored:
                LOG.warning("%s: %d files ignored by glob filter %r: %s", name, len(ignored), src.glob_filter,
                            ", ".join(f.uri.rsplit("/", 1)[-1] for f in ignored[:5]))
        new = [f for f in landed if (f.uri, f.size, f.mtime_ms) not in seen]
        result.skipped_files = len(landed) - len(new)
        if src.format == "image":
            _ingest_images(spark, cfg, store, name, src, run_id, new, result)
            s.add(files_new=len(new), files_skipped=result.skipped_files, files_ignored=result.ignored_files,
                  files_quarantined=result.files_quarantined, rows_ok=result.rows_ok)
            return result
        headers: dict[str, str] = {}
        readable: list[FileInfo] = []
        for f in new:
            header, why = sniff(head(f.uri, cfg.ingest.sniff_bytes), f.size, src)
            if why:
                LOG.warning("quarantined file %s: %s", f.uri, why)
                result.files.append(FileResult(f.uri, f.size, f.mtime_ms, "quarantined", why))
            else:
                headers[f.uri] = header or ""
                readable.append(f)
        if readable:
            _ingest_readable(spark, cfg, store, name, src, run_id, readable, headers, result)
        s.add(files_new=len(new), files_skipped=result.skipped_files, files_quarantined=result.files_quarantined,
              rows_in=result.rows_in, rows_ok=result.rows_ok, rows_quarantined=result.rows_quarantined)
    return result


def _ingest_images(spark: SparkSession, cfg: Config, store: DeltaStore, name: str, src: SourceConf, run_id: str,
                   files: list[FileInfo], result: SourceResult) -> None:
    """One row per image file: decodable ones to bronze, the others quarantined as files with the reason."""
    status: dict[str, str | None] = {f.uri: "empty file" for f in files if f.size == 0}  # binaryFile skips them
    readable = [f for f in files if f.size > 0]
    if readable:
        decoded, result.table_version = ingest_image_files(spark, cfg, store, name, src, run_id, readable)
        status |= decoded
    for f in files:
        reason = status[f.uri]
        result.files.append(FileResult(f.uri, f.size, f.mtime_ms, "quarantined" if reason else "ingested", reason,
                                       1, 0 if reason else 1, 1 if reason else 0))


def _ingest_readable(
    spark: SparkSession, cfg: Config, store: DeltaStore, name: str, src: SourceConf, run_id: str,
    files: list[FileInfo], headers: dict[str, str], result: SourceResult,
) -> None:
    parsed = parse_lines(read_lines(spark, [f.uri for f in files]), src, headers)
    parsed = parsed.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        counts: dict[str, dict[str, int]] = {}
        for r in parsed.groupBy("_source_file", "_kind").count().collect():
            counts.setdefault(r["_source_file"], {})[r["_kind"]] = r["count"]
        now = datetime.now(UTC)
        for f in files:
            c = counts.get(f.uri, {})
            if src.header and not c.get("header"):
                raise RuntimeError(f"{name}: no lines were read back for {f.uri}; refusing to record it as ingested")
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
        result.table_version = store.write(good, table, "append", src.partition_by, metadata={"run_id": run_id})
        written = store.read(table, result.table_version).filter(F.col("_run_id") == run_id).count()
        if written != rows_ok:
            raise RuntimeError(f"{name}: wrote {written} rows to bronze but parsed {rows_ok} good rows")
        bad = (parsed.filter(F.col("_kind") == "bad")
               .select(F.lit(name).alias("source"), F.col("_source_file").alias("source_file"),
                       F.col("_raw").alias("raw_line"), F.col("_reason").alias("reason"),
                       F.lit(run_id).alias("run_id"), F.lit(now).alias("quarantined_at"))
               .coalesce(1))
        if result.rows_quarantined:
            store.write(bad, cfg.catalog.path("quarantine_rows"), "append", ["source"], metadata={"run_id": run_id})
    finally:
        parsed.unpersist()


def write_ingest_log(spark: SparkSession, cfg: Config, store: DeltaStore, run_id: str,
                     results: list[SourceResult]) -> int | None:
    """Record every handled file; the log is what makes a re-run pick up nothing twice. Quarantined files too."""
    now = datetime.now(UTC)
    rows = [(run_id, r.source, f.file, f.size, f.mtime_ms, f.status, f.reason, f.rows_in, f.rows_ok,
             f.rows_quarantined, now) for r in results for f in r.files]
    if not rows:
        return store.version(cfg.catalog.path("ingest_log"))
    bad_files = [row for row in rows if row[5] == "quarantined"]
    if bad_files:
        qf = spark.createDataFrame(bad_files, LOG_SCHEMA).select(
            "source", F.col("file").alias("source_file"), "size", "reason", "run_id",
            F.col("ingested_at").alias("quarantined_at"))
        store.write(qf.coalesce(1), cfg.catalog.path("quarantine_files"), "append", metadata={"run_id": run_id})
    df = spark.createDataFrame(rows, LOG_SCHEMA).coalesce(1)
    return store.write(df, cfg.catalog.path("ingest_log"), "append", metadata={"run_id": run_id})


def rollback_unlogged(cfg: Config, store: DeltaStore, run_id: str, sources: list[str] | None = None
                      ) -> dict[str, int]:
    """Delete the bronze and quarantine rows of earlier ingest runs that never wrote their ingest log entry.

    An ingest run commits bronze (and quarantine) first and the ingest log last; a driver that dies in between
    leaves rows whose files the log does not know, so the next run would ingest them again. The log decides:
    rows of an unlogged run are rolled back (one commit per table) and their files are ingested afresh. A run
    that MLflow still shows as RUNNING may be in flight: that is an error naming it, never a rollback.
    """
    log_path = cfg.catalog.path("ingest_log")
    logged = ({r[0] for r in store.read(log_path).select("run_id").distinct().collect()}
              if store.exists(log_path) else set())
    tables = {cfg.catalog.path(s.table): "_run_id" for name, s in cfg.ingest.sources.items()
              if not sources or name in sources}
    tables |= {cfg.catalog.path(t): "run_id" for t in ("quarantine_rows", "quarantine_files")}
    rolled: dict[str, int] = {}
    for path, column in tables.items():
        table = store.read(path) if store.exists(path) else None
        if table is None or column not in table.columns:
            continue
        runs = [r[0] for r in table.select(column).distinct().collect()]
        orphans = sorted(r for r in runs if r is not None and r not in logged and r != run_id)
        running = [r for r in orphans if _mlflow_status(cfg, r) == "RUNNING"]
        if running:
            raise BadInput(f"{path} holds rows of ingest run(s) {running} that have no ingest log entry and that "
                           "MLflow shows as RUNNING: another ingest may be in progress. If it died, mark it "
                           "(MlflowClient().set_terminated(run_id, 'KILLED')) and run ingest again; its rows are "
                           "then rolled back and re-ingested.")
        if orphans:
            n = store.delete_where(path, column, orphans, {"run_id": run_id, "rollback_of": ",".join(orphans)})
            LOG.warning("ingest: rolled back %d rows of unlogged run(s) %s from %s", n, ", ".join(orphans), path)
            rolled[path] = n
    return rolled


def _mlflow_status(cfg: Config, run_id: str) -> str | None:
    """The MLflow status of an ingest run (None when it is no run of this tracking store)."""
    from mlflow.tracking import MlflowClient

    try:
        return MlflowClient(cfg.tracking_uri).get_run(run_id).info.status
    except Exception:
        return None


def ingest(spark: SparkSession, cfg: Config, store: DeltaStore, run_id: str,
           sources: list[str] | None = None) -> list[SourceResult]:
    """Ingest the named sources, else ingest.select, else every configured source; return per-source results.
    Rows left by an earlier run that died before writing its ingest log are rolled back first."""
    sources = sources or cfg.ingest.select or None
    unknown = sorted(set(sources or []) - set(cfg.ingest.sources))
    if unknown:
        raise ValueError(f"unknown sources {unknown}; configured: {sorted(cfg.ingest.sources)}")
    rollback_unlogged(cfg, store, run_id, sources)
    seen = ingested_files(store, cfg.catalog.path("ingest_log"))
    results = [ingest_source(spark, cfg, store, name, src, run_id, seen)
               for name, src in cfg.ingest.sources.items() if not sources or name in sources]
    pause("ingest.before_log")
    write_ingest_log(spark, cfg, store, run_id, results)
    return results


def summary(results: list[SourceResult]) -> dict:
    """JSON-friendly per-source summary for logs and MLflow."""
    return {r.source: {"rows_in": r.rows_in, "rows_ok": r.rows_ok, "rows_quarantined": r.rows_quarantined,
                       "files_new": len(r.files), "files_skipped": r.skipped_files,
                       "files_ignored": r.ignored_files,
                       "files_quarantined": r.files_quarantined, "table_version": r.table_version,
                       "files": [asdict(f) for f in r.files]} for r in results}


def to_json(results: list[SourceResult]) -> str:
    return json.dumps(summary(results), indent=2, default=str)


def run_ingest(spark: SparkSession, cfg: Config, store: DeltaStore, sources: list[str] | None = None
               ) -> list[SourceResult]:
    """ingest() recorded as one MLflow run: parameters, counts per source, table versions, the file report."""
    import mlflow

    from pipelines.core.tracking import job_run

    with job_run(cfg, "ingest") as run:
        results = ingest(spark, cfg, store, run.info.run_id, sources)
        mlflow.log_params({"sources": ",".join(r.source for r in results), "storage.engine": store.engine,
                           "landing": cfg.catalog.landing})
        for r in results:
            mlflow.log_metrics({f"{r.source}.rows_in": r.rows_in, f"{r.source}.rows_ok": r.rows_ok,
                                f"{r.source}.rows_quarantined": r.rows_quarantined,
                                f"{r.source}.files_new": len(r.files),
                                f"{r.source}.files_quarantined": r.files_quarantined})
            version = store.version(cfg.catalog.path(cfg.ingest.sources[r.source].table))
            mlflow.set_tag(f"table_version.bronze.{r.source}", "none" if version is None else str(version))
        mlflow.log_metrics({"rows_in": sum(r.rows_in for r in results),
                            "rows_ok": sum(r.rows_ok for r in results),
                            "rows_quarantined": sum(r.rows_quarantined for r in results)})
        mlflow.log_text(to_json(results), "ingest_report.json")
    return results
