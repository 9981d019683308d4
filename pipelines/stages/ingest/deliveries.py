"""The delivery log: which landing files a run takes (complete, new by name, size, time and content), the
per-file results, and the ingest log table that makes a re-run pick up nothing twice."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipelines.core.config import Config, SourceConf
from pipelines.core.delta import DeltaStore
from pipelines.core.errors import BadInput
from pipelines.core.files import FileInfo, list_files, open_read
from pipelines.core.landing import Settling, split_writer_names
from pipelines.core.logs import LOG

LOG_SCHEMA = (
    "run_id string, source string, file string, size bigint, mtime_ms bigint, status string, reason string, "
    "rows_in bigint, rows_ok bigint, rows_quarantined bigint, ingested_at timestamp, sha256 string"
)
REDELIVERED = "re-delivered with different content"
DUPLICATE = "duplicate of another delivery"
VANISHED = "vanished: removed from the landing zone after it was listed, before it was read"


@dataclass
class FileResult:
    file: str
    size: int
    mtime_ms: int
    status: str  # ingested | quarantined (both recorded in the ingest log) | vanished (reported only)
    reason: str | None = None
    rows_in: int = 0
    rows_ok: int = 0
    rows_quarantined: int = 0
    sha256: str | None = None  # the delivery's content; set by ingest_source for every file it handles


@dataclass
class SourceResult:
    source: str
    files: list[FileResult] = field(default_factory=list)
    skipped_files: int = 0
    ignored_files: int = 0  # writers' names while copying; image sources: also names glob_filter excludes
    deferred: list[str] = field(default_factory=list)  # still being written: taken by a later run
    vanished: list[FileResult] = field(default_factory=list)  # gone before they were read: not in the log
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


@dataclass
class Deliveries:
    """What the ingest log knows: delivery keys (file, size, mtime), contents (file, sha256), the content of each
    file's ingested deliveries (None for entries logged before content hashes were recorded), and per source the
    file that first delivered each ingested content."""

    keys: set[tuple[str, int, int]] = field(default_factory=set)
    contents: set[tuple[str, str]] = field(default_factory=set)
    ingested: dict[str, set[str | None]] = field(default_factory=dict)
    firsts: dict[str, dict[str, str]] = field(default_factory=dict)  # source -> sha256 -> file


def _log_error(path: str, e: Exception) -> BadInput:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return BadInput(f"the ingest log {path} is unreadable ({type(e).__name__}: {first[:300]}). It records which "
                    "files were ingested and which runs finished, so without it ingest can neither skip old files "
                    "nor roll anything back safely: nothing was changed. Restore the table and run ingest again.")


def read_log(store: DeltaStore, log_path: str) -> pd.DataFrame | None:
    """The ingest log as pandas, oldest entries first (None when there is none); an unreadable log is BadInput,
    never an empty one."""
    try:
        if not store.exists(log_path):
            return None
        table = store.read(log_path)
        cols = [F.col(c) for c in ("run_id", "source", "file", "size", "mtime_ms", "status")]
        cols += [F.unix_micros("ingested_at").alias("ingested_at")]  # an order only: no time zone to convert
        cols += [F.col("sha256")] if "sha256" in table.columns else []
        out = table.select(*cols).toPandas()
    except Exception as e:
        raise _log_error(log_path, e) from e
    if "sha256" not in out.columns:  # a log written before content hashes
        out["sha256"] = None
    return out.sort_values("ingested_at", kind="stable")


def ingested_files(log: pd.DataFrame | None) -> Deliveries:
    """Every delivery already handled, ingested or quarantined, from the ingest log."""
    seen = Deliveries()
    if log is None:
        return seen
    for r in log.itertuples(index=False):
        sha = r.sha256 if isinstance(r.sha256, str) else None
        seen.keys.add((r.file, int(r.size), int(r.mtime_ms)))
        if sha:
            seen.contents.add((r.file, sha))
        if r.status == "ingested":
            seen.ingested.setdefault(r.file, set()).add(sha)
            if sha and r.size:
                seen.firsts.setdefault(r.source, {}).setdefault(sha, r.file)
    return seen


@dataclass
class Landed:
    """One source's landing files as this run found them (pipelines/core/landing.py's rule)."""

    files: list[FileInfo] = field(default_factory=list)  # complete: settled, or known to the log by size and time
    ignored: list[FileInfo] = field(default_factory=list)  # names writers use while copying
    deferred: list[FileInfo] = field(default_factory=list)  # still changing within ingest.settle_s
    vanished: list[FileInfo] = field(default_factory=list)  # listed, then gone before the second look


def _known(f: FileInfo, seen: Deliveries) -> bool:
    """A delivery the log knows by name, size and modification time (never when the file system gives no time)."""
    return f.mtime_ms >= 0 and (f.uri, f.size, f.mtime_ms) in seen.keys


def list_landed(cfg: Config, sources: dict[str, SourceConf], seen: Deliveries) -> dict[str, Landed]:
    """List every source's landing files; files the log does not know must have settled: when there are any,
    wait `ingest.settle_s` once for the whole run and list again. Known files, and links refused at listing, are
    taken as listed (they are skipped, or quarantined with their reason, without being read)."""
    zone = cfg.catalog.landing

    def listing() -> dict[str, tuple[list[FileInfo], list[FileInfo]]]:
        return {name: split_writer_names(list_files(zone, src.path), zone, src.path) for name, src in sources.items()}

    def watched(files: list[FileInfo]) -> list[FileInfo]:
        return [f for f in files if not _known(f, seen) and not f.refused]

    settling = Settling(cfg.ingest.settle_s)
    first = listing()
    waiting = [f for kept, _ in first.values() for f in watched(kept)]
    again = first
    if len(settling.observe(waiting)) < len(waiting):
        LOG.info("ingest: %d new landing files; waiting ingest.settle_s=%ss for them to settle", len(waiting),
                 cfg.ingest.settle_s)
        time.sleep(cfg.ingest.settle_s)
        again = listing()
    settled = {f.uri for f in settling.observe([f for kept, _ in again.values() for f in watched(kept)])}
    out: dict[str, Landed] = {}
    for name, (kept, ignored) in again.items():
        waited = watched(kept)
        now = {f.uri for f in kept}
        landed = Landed([f for f in kept if f not in waited or f.uri in settled], ignored,
                        [f for f in waited if f.uri not in settled],
                        [f for f in watched(first[name][0]) if f.uri not in now])
        for level, what, files in (
                (logging.INFO, "ignored: hidden names or names writers use while copying", landed.ignored),
                (logging.WARNING, f"deferred: still being written (size or modification time changed within "
                                  f"ingest.settle_s={cfg.ingest.settle_s}s), left for a later run", landed.deferred),
                (logging.WARNING, VANISHED, landed.vanished)):
            if files:
                LOG.log(level, "%s: %d files %s: %s", name, len(files), what,
                        ", ".join(f.uri.rsplit("/", 1)[-1] for f in files[:5]))
        out[name] = landed
    return out


def file_sha256(uri: str, keep: int = 0, chunk: int = 4 << 20) -> tuple[str, bytes]:
    """(SHA-256 of a file's bytes, its first `keep` bytes): one sequential read on the driver in chunks, constant
    memory; the kept head serves the format sniffing, so the file is not opened again for it."""
    digest = hashlib.sha256()
    first = b""
    with open_read(uri) as f:
        while block := f.read(max(chunk, keep)):
            if not first and keep:
                first = block[:keep]
            digest.update(block)
    return digest.hexdigest(), first


@dataclass
class Chosen:
    """choose_new's answer: new deliveries, quarantined ones (with the reason), vanished ones, and the sha256 and
    first bytes of every file it read."""

    new: list[FileInfo] = field(default_factory=list)
    quarantined: list[FileResult] = field(default_factory=list)
    vanished: list[FileResult] = field(default_factory=list)
    hashes: dict[str, str] = field(default_factory=dict)
    heads: dict[str, bytes] = field(default_factory=dict)


def quarantined_file(f: FileInfo, why: str, sha: str | None = None) -> FileResult:
    LOG.warning("quarantined file %s: %s", f.uri, why)
    return FileResult(f.uri, f.size, f.mtime_ms, "quarantined", why, sha256=sha)


def choose_new(landed: list[FileInfo], seen: Deliveries, source: str, keep: int = 0) -> Chosen:
    """Split landed files into new deliveries and the others. A file whose (size, mtime) the log knows is not
    read at all; a link refused at listing is quarantined with its reason; any other file is hashed once: the
    same content under the same name (touched, copied again) is no new delivery, different content under a name
    whose earlier delivery was ingested is quarantined (REDELIVERED), and content this source already ingested
    under another name (in an earlier run, or earlier in this listing) is quarantined as a DUPLICATE naming that
    file. Empty files are no duplicates (they have no rows; sniffing quarantines them). A file removed since it
    was listed is reported vanished."""
    out = Chosen()
    firsts = dict(seen.firsts.get(source, {}))
    for f in landed:
        if _known(f, seen):
            continue
        if f.refused:
            out.quarantined.append(quarantined_file(f, f.refused))
            continue
        try:
            sha, out.heads[f.uri] = file_sha256(f.uri, keep)
        except FileNotFoundError:
            LOG.warning("%s: %s", f.uri, VANISHED)
            out.vanished.append(FileResult(f.uri, f.size, f.mtime_ms, "vanished", VANISHED))
            continue
        out.hashes[f.uri] = sha
        if (f.uri, sha) in seen.contents:
            continue
        earlier = seen.ingested.get(f.uri)
        if earlier:
            known = sorted(h[:12] for h in earlier if h)
            was = (f"the earlier delivery's content was sha256 {', '.join(known)}" if known else
                   "the earlier delivery was logged before content hashes were recorded")
            out.quarantined.append(quarantined_file(f, f"{REDELIVERED}: sha256 {sha[:12]}, {was}; its rows stay as "
                                                       "first delivered. Deliver a correction under a new file name",
                                                    sha))
            continue
        first = firsts.get(sha)
        if first is not None and f.size:
            out.quarantined.append(quarantined_file(f, f"{DUPLICATE}: the same content (sha256 {sha[:12]}) as {first}, "
                                                  "which was delivered first; not ingested twice", sha))
            continue
        if f.size:
            firsts[sha] = f.uri
        out.new.append(f)
    return out


def write_ingest_log(spark: SparkSession, cfg: Config, store: DeltaStore, run_id: str,
                     results: list[SourceResult]) -> int | None:
    """Record every handled file; the log is what makes a re-run pick up nothing twice. Quarantined files too.
    A log written before content hashes gains the sha256 column (null for its old rows) in this same commit."""
    now = datetime.now(UTC)
    log_path = cfg.catalog.path("ingest_log")
    rows = [(run_id, r.source, f.file, f.size, f.mtime_ms, f.status, f.reason, f.rows_in, f.rows_ok,
             f.rows_quarantined, now, f.sha256) for r in results for f in r.files]
    if not rows:
        return store.version(log_path)
    bad_files = [row for row in rows if row[5] == "quarantined"]
    if bad_files:
        qf = spark.createDataFrame(bad_files, LOG_SCHEMA).select(
            "source", F.col("file").alias("source_file"), "size", "reason", "run_id",
            F.col("ingested_at").alias("quarantined_at"))
        store.write(qf.coalesce(1), cfg.catalog.path("quarantine_files"), "append", metadata={"run_id": run_id})
    df = spark.createDataFrame(rows, LOG_SCHEMA)
    if store.exists(log_path) and "sha256" not in store.read(log_path).columns:
        old = store.read(log_path).withColumn("sha256", F.lit(None).cast("string"))
        return store.write(old.unionByName(df).coalesce(1), log_path, "overwrite",
                           metadata={"run_id": run_id, "upgrade": "sha256 column"})
    return store.write(df.coalesce(1), log_path, "append", metadata={"run_id": run_id})
