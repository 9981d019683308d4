"""Parsing and typing of landing files: sniffing a file's format on the driver, then line by line on the
executors (CSV with quoted newlines, JSON lines) into the declared schema; every line is `ok` or `bad` with its
reason. Ingest and the streaming scorer read files this one way."""

from __future__ import annotations

import csv
import json
import math
import re
from collections import deque
from collections.abc import Iterator
from decimal import Decimal

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.core.config import SourceConf
from pipelines.core.files import from_spark_path, spark_input
from pipelines.core.logs import LOG

META_COLS = ["_source_file", "_raw", "_kind", "_reason"]
OTHER_DELIMITERS = [";", "\t", "|", ","]
MAX_RECORD_LINES = 10_000  # lines one quoted CSV field may span before its opening quote counts as stray
INT_RANGE = {"int": (-(2**31), 2**31 - 1), "bigint": (-(2**63), 2**63 - 1)}
PANDAS_INT = {"int": "Int32", "bigint": "Int64"}
NUMPY_INT = {"int": np.int32, "bigint": np.int64}


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
