"""ingest: landing files -> bronze Delta tables, with explicit schemas, exactly-once file pick-up and quarantine.

Every landed line is accounted for: a data line is either written to bronze or quarantined with its reason, so
rows_in == rows_ok + rows_quarantined per file. A file that cannot be read at all is quarantined as a file. Only
complete files are taken (pipelines/core/landing.py): names writers use while copying are ignored, and a file
still changing is deferred to the next run; both are counted and reported, like files that vanish before they
are read.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import re
import socket
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import fsspec
import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.core.config import Config, SourceConf
from pipelines.core.delta import DeltaStore
from pipelines.core.errors import BadInput
from pipelines.core.failpoints import pause
from pipelines.core.files import FileInfo, exists, from_spark_path, join, list_files, spark_input
from pipelines.core.landing import Settling, split_writer_names
from pipelines.core.lease import Lease
from pipelines.core.logs import LOG, redact, redact_config, stage
from pipelines.core.tracking import git_commit
from pipelines.ingest_images import ingest_image_files, split_by_filter

META_COLS = ["_source_file", "_raw", "_kind", "_reason"]
OTHER_DELIMITERS = [";", "\t", "|", ","]
MAX_RECORD_LINES = 10_000  # lines one quoted CSV field may span before its opening quote counts as stray
INT_RANGE = {"int": (-(2**31), 2**31 - 1), "bigint": (-(2**63), 2**63 - 1)}
PANDAS_INT = {"int": "Int32", "bigint": "Int64"}
NUMPY_INT = {"int": np.int32, "bigint": np.int64}
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
_INTEGER = re.compile(r"[+-]?\d+")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _exact_int(text: str) -> int | None:
    """An integer written as digits, or as an integral decimal (`3.0`, `1e3`), exactly; None when it is neither."""
    text = text.strip()
    if _INTEGER.fullmatch(text):
        return int(text)
    if not _NUMBER.fullmatch(text):
        return None
    d = Decimal(text)
    if d.adjusted() > 40:  # far beyond bigint: no need to expand it to check
        return int(math.copysign(1, d)) * 2**200
    return int(d) if d == d.to_integral_value() else None


def _convert_int(values: pd.Series, typ: str) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """Strings -> exact integers of `typ` (never through float, which loses digits past 2**53); return (typed
    series, mask of values that did not parse, mask of values out of the type's range)."""
    lo, hi = INT_RANGE[typ]
    present = values.notna().to_numpy()
    nums = pd.to_numeric(values[present].str.strip(), errors="coerce")
    if nums.dtype == np.int64:  # the common case: every value plain digits within int64, exact and vectorized
        ints = np.zeros(len(values), dtype=np.int64)
        ints[present] = nums.to_numpy()
        out_of_range = (ints < lo) | (ints > hi)
        ints[out_of_range] = 0
        typed = pd.arrays.IntegerArray(ints.astype(NUMPY_INT[typ]), ~present | out_of_range)
        return pd.Series(typed, index=values.index), np.zeros(len(values), dtype=bool), out_of_range
    parsed = [None if not p else _exact_int(v) for p, v in zip(present, values, strict=True)]
    failed = np.array([p and x is None for p, x in zip(present, parsed, strict=True)], dtype=bool)
    out_of_range = np.array([x is not None and not lo <= x <= hi for x in parsed], dtype=bool)
    kept = [None if x is None or r else x for x, r in zip(parsed, out_of_range, strict=True)]
    return pd.Series(pd.array(kept, dtype=PANDAS_INT[typ]), index=values.index), failed, out_of_range


def _convert(values: pd.Series, typ: str, ts_format: str) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """Convert non-null strings to `typ`; return (typed series, mask of values that did not parse, mask of
    integers out of the type's range)."""
    present = values.notna().to_numpy()
    no_overflow = np.zeros(len(values), dtype=bool)
    if typ == "string":
        return values, np.zeros(len(values), dtype=bool), no_overflow
    if typ in INT_RANGE:
        return _convert_int(values, typ)
    if typ in ("double", "float"):
        nums = pd.to_numeric(values.str.strip(), errors="coerce")
        failed = present & nums.isna().to_numpy()
        return nums.astype("float64" if typ == "double" else "float32"), failed, no_overflow
    if typ == "boolean":
        mapped = values.str.strip().str.lower().map({"true": True, "false": False, "1": True, "0": False})
        return mapped.astype("boolean"), present & mapped.isna().to_numpy(), no_overflow
    if typ == "date":
        parsed = pd.to_datetime(values, format="%Y-%m-%d", errors="coerce")
        return parsed.dt.date, present & parsed.isna().to_numpy(), no_overflow
    parsed = pd.to_datetime(values, format=ts_format, utc=True, errors="coerce")
    return parsed, present & parsed.isna().to_numpy(), no_overflow


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
        typed, failed, out_of_range = _convert(pd.Series(cells[j], dtype=object), typ, src.timestamp_format)
        for i in np.flatnonzero(failed & (kind == "ok")):
            kind[i], reason[i] = "bad", f"unparsable {typ} in column {name}: {cells[j][i]!r}"
        for i in np.flatnonzero(out_of_range & (kind == "ok")):
            kind[i], reason[i] = "bad", f"{typ} out of range in column {name}: {cells[j][i]!r}"
        out[name] = typed
    frame = pd.DataFrame(out)
    frame["_source_file"] = files.to_numpy()
    frame["_raw"] = text
    frame["_kind"] = kind
    frame["_reason"] = reason
    return frame


class _Records:
    """Joins the lines of a CSV record whose quoted field holds newlines into one record (RFC 4180).

    A line with an odd number of quote characters opens a record that runs until the quote count is even again.
    If that joined record does not have the declared field count, or no line closes it within MAX_RECORD_LINES
    or before the end of the file, the opening line was a stray quote: it becomes a record of its own (which is
    quarantined as malformed quoting) and the lines after it are read again from scratch.
    """

    def __init__(self, src: SourceConf) -> None:
        self.src = src
        self.pending: list[bytes] = []
        self.quotes = 0

    def _fits(self, record: bytes) -> bool:
        try:
            rows = list(csv.reader([record.decode("utf-8")], delimiter=self.src.delimiter, strict=True))
        except (UnicodeDecodeError, csv.Error):
            return False
        return len(rows) == 1 and len(rows[0]) == len(self.src.columns)

    def _give_up(self, queue: deque[bytes]) -> bytes:
        """Emit the opening line alone and queue the lines after it to be read again."""
        first, rest = self.pending[0], self.pending[1:]
        self.pending, self.quotes = [], 0
        queue.extendleft(reversed(rest))
        return first

    def feed(self, line: bytes) -> list[bytes]:
        """Records completed by this line, in order."""
        if not self.pending and not line.count(b'"') % 2:
            return [line]  # the common case: a whole record on one line
        return self._feed(deque([line]))

    def _feed(self, queue: deque[bytes]) -> list[bytes]:
        out: list[bytes] = []
        while queue:
            line = queue.popleft()
            odd = line.count(b'"') % 2
            if not self.pending:
                if odd:
                    self.pending, self.quotes = [line], 1
                else:
                    out.append(line)
                continue
            self.pending.append(line)
            self.quotes += odd
            if self.quotes % 2 == 0:
                record = b"\n".join(self.pending)
                if self._fits(record):
                    out.append(record)
                    self.pending, self.quotes = [], 0
                else:
                    out.append(self._give_up(queue))
            elif len(self.pending) >= MAX_RECORD_LINES:
                out.append(self._give_up(queue))
        return out

    def end_of_file(self) -> list[bytes]:
        """The file ended: a record still open was a stray quote."""
        out: list[bytes] = []
        while self.pending:
            queue: deque[bytes] = deque()
            out.append(self._give_up(queue))
            out += self._feed(queue)
        return out

    def end_of_split(self) -> list[bytes]:
        """Spark's read split of the file ended inside an open record: the lines so far, to be marked `split`."""
        out, self.pending, self.quotes = self.pending, [], 0
        return out


def _csv_records(pdf: pd.DataFrame, state: dict[str, object], src: SourceConf) -> pd.DataFrame:
    """One batch of lines (in file order) -> its complete records; state carries an open record to the next batch.

    A record still open where Spark's read split of a file ends (the file is larger than one split) is marked
    `_split`: the file is then read again whole (see _ingest_readable)."""
    raws: list[bytes] = []
    files: list[str] = []
    split: list[bool] = []
    n = len(pdf)
    ends = pdf["_split_end"].to_numpy() if "_split_end" in pdf.columns else np.full(n, -1)
    sizes = pdf["_file_size"].to_numpy() if "_file_size" in pdf.columns else np.full(n, -1)
    for raw, file, end, size in zip(pdf["_raw"], pdf["_source_file"], ends, sizes, strict=True):
        if (file, end) != state.get("key"):
            _close(state, raws, files, split)
            state["key"], state["records"], state["eof"] = (file, end), _Records(src), end >= size
        records = state["records"].feed(bytes(raw))  # type: ignore[union-attr]
        raws += records
        files += [file] * len(records)
        split += [False] * len(records)
    return pd.DataFrame({"_raw": pd.Series(raws, dtype=object), "_source_file": pd.Series(files, dtype=object),
                         "_split": pd.Series(split, dtype=bool)})


def _close(state: dict[str, object], raws: list[bytes], files: list[str], split: list[bool]) -> None:
    """The current file split ended: flush its open record (stray quote at the end of a file, or `_split`)."""
    records = state.get("records")
    if records is None:
        return
    file = state["key"][0]  # type: ignore[index]
    rest = records.end_of_file() if state["eof"] else records.end_of_split()  # type: ignore[union-attr]
    raws += rest
    files += [file] * len(rest)
    split += [not state["eof"]] * len(rest)
    state["records"] = None


def parse_lines(lines: DataFrame, src: SourceConf, headers: dict[str, str]) -> DataFrame:
    """Lines (`_raw` binary, `_source_file`; optionally `_split_end`, `_file_size` from read_lines) -> typed
    columns plus `_source_file`, `_raw`, `_kind`, `_reason`.

    CSV lines are first joined into records (a quoted field may hold newlines); `_kind` is `split` for the lines
    of a record cut by the end of a read split. Spark's paths are mapped back to the listing's URIs.
    """
    schema = ", ".join(f"`{c}` {t}" for c, t in src.columns.items())
    schema += ", _source_file string, _raw string, _kind string, _reason string"

    def fn(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        state: dict[str, object] = {}
        for pdf in batches:
            uris = {p: from_spark_path(p) for p in pdf["_source_file"].unique()}
            pdf = pdf.assign(_source_file=pdf["_source_file"].map(uris))
            if src.format == "csv":
                pdf = _csv_records(pdf, state, src)
                yield _with_split(parse_batch(pdf["_raw"], pdf["_source_file"], src, headers), pdf["_split"])
            else:
                yield parse_batch(pdf["_raw"], pdf["_source_file"], src, headers)
        if src.format == "csv":
            raws: list[bytes] = []
            files: list[str] = []
            split: list[bool] = []
            _close(state, raws, files, split)
            if raws:
                yield _with_split(parse_batch(pd.Series(raws, dtype=object), pd.Series(files, dtype=object), src,
                                              headers), pd.Series(split))

    return lines.mapInPandas(fn, schema)


def _with_split(frame: pd.DataFrame, split: pd.Series) -> pd.DataFrame:
    mask = split.to_numpy(dtype=bool)
    frame.loc[mask, "_kind"] = "split"
    frame.loc[mask, "_reason"] = "record continues in the next read split"
    return frame


def read_lines(spark: SparkSession, files: list[str], whole: bool = False) -> DataFrame:
    """Raw lines as bytes (so bad encodings survive to be reported) with the file each came from, as Spark names
    it, and where the read split holding the line ends (`_split_end`, `_file_size`).

    Lines end at \\n only, so a \\r\\n inside a quoted field is kept. `whole` reads each file as one split (one
    row per file, then cut into lines), for files with a quoted newline across the splits Spark would make. A file
    removed after Spark listed it gives no lines (the caller reports it vanished) instead of failing the job.
    """
    paths = [spark_input(f) for f in files]
    meta = [F.col("_metadata.file_path").alias("_source_file"), F.col("_metadata.file_size").alias("_file_size")]
    reader = spark.read.option("ignoreMissingFiles", "true")
    if not whole:
        end = (F.col("_metadata.file_block_start") + F.col("_metadata.file_block_length")).alias("_split_end")
        return reader.text(paths, lineSep="\n").select(F.col("value").cast("binary").alias("_raw"), *meta, end)
    rows = reader.text(paths, wholetext=True).select(F.col("value").cast("binary").alias("_raw"), *meta)

    def lines(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            for raw, file, size in zip(pdf["_raw"], pdf["_source_file"], pdf["_file_size"], strict=True):
                parts = bytes(raw).split(b"\n")
                parts = parts[:-1] if parts and parts[-1] == b"" else parts
                yield pd.DataFrame({"_raw": parts, "_source_file": file, "_file_size": size, "_split_end": size})

    return rows.mapInPandas(lines, "_raw binary, _source_file string, _file_size bigint, _split_end bigint")


# ---- orchestration ---------------------------------------------------------------------------------------------------
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
    with fsspec.open(uri, "rb") as f:
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


def _quarantine(f: FileInfo, why: str, sha: str | None = None) -> FileResult:
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
            out.quarantined.append(_quarantine(f, f.refused))
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
            out.quarantined.append(_quarantine(f, f"{REDELIVERED}: sha256 {sha[:12]}, {was}; its rows stay as first "
                                                  "delivered. Deliver a correction under a new file name", sha))
            continue
        first = firsts.get(sha)
        if first is not None and f.size:
            out.quarantined.append(_quarantine(f, f"{DUPLICATE}: the same content (sha256 {sha[:12]}) as {first}, "
                                                  "which was delivered first; not ingested twice", sha))
            continue
        if f.size:
            firsts[sha] = f.uri
        out.new.append(f)
    return out


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
                    result.files.append(_quarantine(f, why))
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


def bad_rows(parsed: DataFrame, source: str, run_id: str) -> DataFrame:
    """Parsed lines of kind `bad` as quarantine/rows rows (the time aside): source, source_file, raw_line, reason,
    run_id."""
    return parsed.filter(F.col("_kind") == "bad").select(
        F.lit(source).alias("source"), F.col("_source_file").alias("source_file"), F.col("_raw").alias("raw_line"),
        F.col("_reason").alias("reason"), F.lit(run_id).alias("run_id"))


def parse_files(spark: SparkSession, src: SourceConf, uris: list[str], headers: dict[str, str]
                ) -> tuple[DataFrame, dict[str, dict[str, int]], list[DataFrame]]:
    """Parse the files line by line; a file with a quoted newline across Spark's read splits is parsed again
    whole. Return the parsed rows, counts by file and kind, and the cached frames to unpersist. (Ingest and the
    streaming scorer read files this one way.)"""
    parsed = parse_lines(read_lines(spark, uris), src, headers).persist(StorageLevel.MEMORY_AND_DISK)
    cached = [parsed]
    counts = _kind_counts(parsed)
    resplit = sorted(u for u, c in counts.items() if c.get("split"))
    if resplit:
        LOG.info("%s: %d files have a quoted newline across read splits; reading them whole", src.table,
                 len(resplit))
        whole = parse_lines(read_lines(spark, resplit, whole=True), src, headers).persist(StorageLevel.MEMORY_AND_DISK)
        cached.append(whole)
        parsed = parsed.filter(~F.col("_source_file").isin(resplit)).unionByName(whole)
        counts = {u: c for u, c in counts.items() if u not in resplit} | _kind_counts(whole)
    return parsed, counts, cached


def _kind_counts(parsed: DataFrame) -> dict[str, dict[str, int]]:
    """{file: {kind: lines}} of parsed lines."""
    counts: dict[str, dict[str, int]] = {}
    for r in parsed.groupBy("_source_file", "_kind").count().collect():
        counts.setdefault(r["_source_file"], {})[r["_kind"]] = r["count"]
    return counts


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


def _run_ids(store: DeltaStore, path: str, column: str) -> set[str]:
    if not store.exists(path):
        return set()
    table = store.read(path)
    if column not in table.columns:
        return set()
    return {r[0] for r in table.select(column).distinct().collect() if r[0] is not None}


def rollback_unlogged(cfg: Config, store: DeltaStore, run_id: str, dead: list[str], log: pd.DataFrame | None
                      ) -> dict[str, int]:
    """Delete the bronze and quarantine rows of dead ingest runs that never wrote their ingest log entry, and the
    data files those runs wrote but never committed.

    An ingest run commits bronze (and quarantine) first and the ingest log last; a driver that dies in between
    leaves rows whose files the log does not know, so the next run would ingest them again. A driver killed while
    a write ran leaves that write's files in the table folder, referenced by no version; holding the lease, this
    run knows their writer is gone (see DeltaStore.remove_dead_files). Rows are deleted only
    on evidence: `dead` are the runs the ingest lease proves stopped (a dead holder, or one that failed), or that a
    person named in ingest.roll_back; the log, which must be readable, proves they are unlogged; and the tracking
    server must be reachable to mark them KILLED. Rows of any other run (the streaming job's quarantine rows, a
    run the lease does not account for) are never deleted: bronze rows that nothing accounts for are an error.
    """
    logged = set(log["run_id"]) if log is not None else set()
    orphans = sorted(r for r in dict.fromkeys(dead) if r not in logged and r != run_id)
    bronze = [cfg.catalog.path(s.table) for s in cfg.ingest.sources.values()]
    bronze_runs = {path: _run_ids(store, path, "_run_id") for path in dict.fromkeys(bronze)}
    unexplained = {path: sorted(runs - logged - set(orphans) - {run_id}) for path, runs in bronze_runs.items()}
    unexplained = {p: r for p, r in unexplained.items() if r}
    if unexplained:
        where = "; ".join(f"{p}: {r}" for p, r in unexplained.items())
        missing = " The ingest log table is missing." if log is None else ""
        raise BadInput(f"bronze holds rows of ingest run(s) that neither the ingest log "
                       f"{cfg.catalog.path('ingest_log')} nor the ingest lease accounts for ({where}).{missing} "
                       "Nothing was deleted. If the log was lost, restore it; if those runs are known to be dead "
                       "and unlogged, name them in ingest.roll_back to roll their rows back.")
    if not orphans:
        return {}
    _close_dead_runs(cfg, orphans)
    tables = {path: "_run_id" for path in bronze_runs}
    tables |= {cfg.catalog.path(t): "run_id" for t in ("quarantine_rows", "quarantine_files")}
    rolled: dict[str, int] = {}
    for path, column in tables.items():
        n = store.delete_where(path, column, orphans, {"run_id": run_id, "rollback_of": ",".join(orphans)})
        if n:
            LOG.warning("ingest: rolled back %d rows of dead unlogged run(s) %s from %s", n, ", ".join(orphans),
                        path)
            rolled[path] = n
    # After the deletes: a compaction that read the dead runs' committed rows can no longer commit.
    for path, column in (tables | {cfg.catalog.path("ingest_log"): "run_id"}).items():
        files, size = store.remove_dead_files(path, column, orphans)
        if files:
            LOG.warning("ingest: removed %d files (%d bytes) that dead run(s) %s wrote to %s and never committed",
                        files, size, ", ".join(orphans), path)
    return rolled


def _tracking_unreachable(uri: str) -> str | None:
    """Why an http(s) tracking server cannot be reached (a quick TCP connect), else None."""
    from urllib.parse import urlparse

    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", port), timeout=10):
            return None
    except OSError as e:
        return str(e)


def _close_dead_runs(cfg: Config, runs: list[str]) -> None:
    """Mark dead ingest runs that MLflow still shows as RUNNING as KILLED, before their rows are rolled back; a
    tracking server that cannot answer is BadInput, so nothing is deleted on missing evidence."""
    for r in runs:
        if _mlflow_status(cfg, r) == "RUNNING":
            from mlflow.tracking import MlflowClient

            MlflowClient(cfg.tracking_uri).set_terminated(r, "KILLED")
            LOG.warning("ingest: marked dead run %s KILLED in MLflow", r)


def _mlflow_status(cfg: Config, run_id: str) -> str | None:
    """The MLflow status of an ingest run (None when it is no run of this tracking store). A tracking store that
    cannot answer is BadInput naming it: an unknown status is never taken for a missing run."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    def refuse(why: str) -> BadInput:
        return BadInput(f"the MLflow tracking server {cfg.tracking_uri} is unreachable ({why}): ingest will not "
                        f"roll back the rows of dead run {run_id} without closing that run there, so nothing was "
                        "deleted. Start the server (or fix mlflow.tracking_uri) and run ingest again.")

    why = _tracking_unreachable(cfg.tracking_uri)
    if why:
        raise refuse(why)
    try:
        return MlflowClient(cfg.tracking_uri).get_run(run_id).info.status
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise refuse(str(e).splitlines()[0][:300]) from e
    except Exception as e:
        raise refuse(f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}") from e


def ingest(spark: SparkSession, cfg: Config, store: DeltaStore, run_id: str,
           sources: list[str] | None = None) -> list[SourceResult]:
    """Ingest the named sources, else ingest.select, else every configured source; return per-source results.

    The run holds the workspace's ingest lease throughout (waiting for a live holder, taking over a dead one), so
    concurrent runs are serialized and the later one finds nothing new. Every commit it makes (bronze, quarantine,
    the log, rollback deletes) is fenced by the lease: checked right before it commits, and the run's Spark jobs
    are cancelled the moment the lease is lost, so a holder judged dead commits nothing more. Rows left by an
    earlier run that died or failed before writing its ingest log are rolled back first."""
    sources = sources or cfg.ingest.select or None
    unknown = sorted(set(sources or []) - set(cfg.ingest.sources))
    if unknown:
        raise ValueError(f"unknown sources {unknown}; configured: {sorted(cfg.ingest.sources)}")
    lc = cfg.ingest.lease
    jobs = f"ingest-{run_id}"  # this run's Spark jobs, to cancel when the lease is lost
    lease = Lease(join(cfg.workspace, "leases", "ingest"), run_id, lc.expiry_s, lc.heartbeat_s, lc.wait_s,
                  lc.poll_s, on_lost=lambda _: spark.sparkContext.cancelJobsWithTag(jobs))
    dead = [*lease.acquire(), *cfg.ingest.roll_back]
    store = store.fenced(lease.check)
    spark.sparkContext.addJobTag(jobs)
    ok = False
    try:
        log_path = cfg.catalog.path("ingest_log")
        log = read_log(store, log_path)
        rollback_unlogged(cfg, store, run_id, dead, log)
        seen = ingested_files(log)
        chosen = {name: src for name, src in cfg.ingest.sources.items() if not sources or name in sources}
        landed = list_landed(cfg, chosen, seen)
        results = [ingest_source(spark, cfg, store, name, src, run_id, seen, landed[name])
                   for name, src in chosen.items()]
        lease.check()
        pause("ingest.before_log")
        write_ingest_log(spark, cfg, store, run_id, results)
        ok = True
        return results
    finally:
        spark.sparkContext.removeJobTag(jobs)
        lease.release(ok, dead)


def summary(results: list[SourceResult]) -> dict:
    """JSON-friendly per-source summary for logs and MLflow."""
    return {r.source: {"rows_in": r.rows_in, "rows_ok": r.rows_ok, "rows_quarantined": r.rows_quarantined,
                       "files_new": len(r.files), "files_skipped": r.skipped_files,
                       "files_ignored": r.ignored_files, "files_deferred": len(r.deferred),
                       "files_vanished": len(r.vanished),
                       "files_quarantined": r.files_quarantined, "table_version": r.table_version,
                       "files": [asdict(f) for f in r.files], "deferred": r.deferred,
                       "vanished": [asdict(f) for f in r.vanished]} for r in results}


def to_json(results: list[SourceResult]) -> str:
    return json.dumps(summary(results), indent=2, default=str)


def ingest_record(cfg: Config, results: list[SourceResult], engine: str) -> tuple[dict[str, str], str]:
    """The params and the file report (JSON) an ingest run records in MLflow, masked (a landing URI's password)."""
    params = {"sources": ",".join(r.source for r in results), "storage.engine": engine,
              "landing": cfg.catalog.landing}
    return redact_config(params), redact(to_json(results))


def run_ingest(spark: SparkSession, cfg: Config, store: DeltaStore, sources: list[str] | None = None
               ) -> list[SourceResult]:
    """ingest() recorded as one MLflow run: parameters, counts per source, table versions, the file report."""
    import mlflow

    from pipelines.core.tracking import job_run

    with job_run(cfg, "ingest") as run:
        results = ingest(spark, cfg, store, run.info.run_id, sources)
        params, report = ingest_record(cfg, results, store.engine)
        mlflow.log_params(params)
        for r in results:
            mlflow.log_metrics({f"{r.source}.rows_in": r.rows_in, f"{r.source}.rows_ok": r.rows_ok,
                                f"{r.source}.rows_quarantined": r.rows_quarantined,
                                f"{r.source}.files_new": len(r.files),
                                f"{r.source}.files_quarantined": r.files_quarantined,
                                f"{r.source}.files_deferred": len(r.deferred),
                                f"{r.source}.files_vanished": len(r.vanished)})
            version = store.version(cfg.catalog.path(cfg.ingest.sources[r.source].table))
            mlflow.set_tag(f"table_version.bronze.{r.source}", "none" if version is None else str(version))
        mlflow.log_metrics({"rows_in": sum(r.rows_in for r in results),
                            "rows_ok": sum(r.rows_ok for r in results),
                            "rows_quarantined": sum(r.rows_quarantined for r in results)})
        mlflow.log_text(report, "ingest_report.json")
    return results
