"""Bad landing input: every file is ingested, or quarantined as a file with its reason, and every CSV record is
counted once, as a bronze row or a quarantine row with its reason. Never a crash, never a silent drop.

One ingest run over one landing zone holding all the bad files (three CSV sources and an image source, with
Spark's read splits made small so that one file is read in several); the per-file tests then check that run's
report and tables. rows_in is checked against the file's own CSV record
count, taken here with Python's csv module, not against ok + bad.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyspark.sql import Row, SparkSession

from pipelines.core.config import load_config
from pipelines.core.delta import DeltaStore
from pipelines.stages.ingest.deliveries import FileResult
from pipelines.stages.ingest.run import ingest

COLUMNS = "{id: int, big: bigint, flag: boolean, name: string}"
SOURCES = [
    f"ingest.sources.t={{path: t/*.csv, table: t, columns: {COLUMNS}}}",
    f"ingest.sources.tab={{path: tab/*, table: tab, delimiter: \"\\t\", columns: {COLUMNS}}}",
    f"ingest.sources.pipe={{path: pipe/*, table: pipe, delimiter: '|', columns: {COLUMNS}}}",
    "ingest.sources.img={path: img/**, format: image, glob_filter: '*.png', table: img}",
]
HEADER = b"id,big,flag,name\n"


@dataclass
class Case:
    """A landed file and what ingest must make of it: quarantined with `reason`, or ingested with these row ids
    and these quarantine reasons (one per bad record, by raw record)."""

    data: bytes
    reason: str | None = None
    ids: tuple[int, ...] = ()
    bad: tuple[tuple[bytes, str], ...] = ()


ROWS_OK = b"1,1,true,a\n2,9223372036854775807,false,b\n3,-9223372036854775808,1,c\n4,9007199254740993,0,d\n5,,TRUE,e\n"
ROWS_BAD = (
    (b"6,1,true,e,extra", "wrong field count: expected 4, got 5"),
    (b"7,1,true", "wrong field count: expected 4, got 3"),
    (b"2147483648,1,true,f", "int out of range in column id: '2147483648'"),
    (b"-2147483649,1,true,f", "int out of range in column id: '-2147483649'"),
    (b"8,9223372036854775808,true,g", "bigint out of range in column big: '9223372036854775808'"),
    (b"9,-9223372036854775809,true,h", "bigint out of range in column big: '-9223372036854775809'"),
    (b"10,99999999999999999999,true,i", "bigint out of range in column big: '99999999999999999999'"),
    (b"11,1,yes,j", "unparsable boolean in column flag: 'yes'"),
    (b"12,1,2,k", "unparsable boolean in column flag: '2'"),
)
SPLIT = b"".join(b'%d,%d,true,"line one\nline two ' % (i, i) + b"x" * (i % 37) + b'"\n' for i in range(1, 101))
SPLIT_BYTES = 1024  # spark.sql.files.maxPartitionBytes during the run: Spark reads SPLIT's file in 5 splits
QUOTED = (b'id,big,flag,name\n1,1,true,"two\nlines"\n2,2,false,plain\n3,3,true,"three\r\nlines, ""quoted"""\n'
          b'4,4,true,"ends with newline\n"\n5,5,false,last\n')
CSV_CASES = {
    "t/header_only.csv": Case(HEADER),
    "t/header_only_no_newline.csv": Case(HEADER.rstrip(b"\n")),
    "t/fields.csv": Case(HEADER + ROWS_OK + b"\n".join(r for r, _ in ROWS_BAD) + b"\n", ids=(1, 2, 3, 4, 5),
                         bad=ROWS_BAD),
    "t/header_extra_column.csv": Case(b"id,big,flag,name,more\n1,1,true,a,x\n", "header mismatch"),
    "t/header_missing_column.csv": Case(b"id,big,name\n1,1,a\n", "header mismatch"),
    "t/header_bad_utf8.csv": Case(b"id,big,fl\xffag,name\n1,1,true,a\n", "not a UTF-8 text file"),
    "t/quoted_newlines.csv": Case(QUOTED, ids=(1, 2, 3, 4, 5)),
    "t/split across reads.csv": Case(HEADER + SPLIT, ids=tuple(range(1, 101))),
    "t/stray_quote.csv": Case(HEADER + b'1,1,true,"unclosed\n2,2,true,b\n3,3,true,c\n', ids=(2, 3),
                              bad=((b'1,1,true,"unclosed', "malformed quoting"),)),
    "t/flights 2013-01 \u00e9.csv": Case(HEADER + b"1,1,true,spaces and accents\n", ids=(1,)),
    "t/export[1] {a,b}.csv": Case(HEADER + b"1,1,true,glob characters\n", ids=(1,)),
    "tab/good.tsv": Case(b"id\tbig\tflag\tname\n1\t1\ttrue\ta, with comma\n2\t2\tfalse\tb|c\n", ids=(1, 2)),
    "tab/commas.csv": Case(HEADER + b"1,1,true,a\n", "wrong delimiter: expected '\\t', file uses ','"),
    "pipe/good.psv": Case(b"id|big|flag|name\n1|1|true|a, with comma\n2|2|false|\"x|y\"\n", ids=(1, 2)),
    "pipe/tabs.tsv": Case(b"id\tbig\tflag\tname\n1\t1\ttrue\ta\n", "wrong delimiter: expected '|', file uses '\\t'"),
    "pipe/semicolons.csv": Case(b"id;big;flag;name\n1;1;true;a\n", "wrong delimiter: expected '|', file uses ';'"),
}


def _png() -> bytes:
    import numpy as np

    from pipelines.stages.land_demo import _png as png

    return png(np.eye(8, dtype=np.uint8) * 200)


IMAGE_CASES = {
    "img/3/good \u00e9 1.png": None,
    "img/3/empty.png": "empty file",
    "img/3/truncated.png": "not a decodable image: ",
    "img/5/truncated \u00e9.png": "not a decodable image: ",
}


def _delimiter(rel: str) -> str:
    return {"tab": "\t", "pipe": "|"}.get(rel.split("/")[0], ",")


def _records(case: Case, rel: str) -> int:
    """The file's data records, counted independently: Python's csv module, minus the header and blank records.
    A stray quote is counted as the csv module cannot (it would run to the end of the file): one record a line."""
    text = case.data.decode("utf-8")
    if case.bad and case.bad[0][1] == "malformed quoting":
        return sum(1 for line in text.splitlines()[1:] if line.strip())
    return sum(1 for rec in list(csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(rel)))[1:] if rec)


@dataclass
class Run:
    """The ingest run's per-file report and what its tables hold, read once."""

    landing: Path
    files: dict[str, FileResult]  # by file URI
    bronze: dict[str, list[Row]]  # by table
    quarantine_rows: list[Row]
    quarantine_files: dict[str, str]  # file URI -> reason
    splits: int  # read splits Spark made of "t/split across reads.csv"

    def file(self, rel: str) -> FileResult:
        return self.files["file://" + str((self.landing / rel).resolve())]


@pytest.fixture(scope="module")
def run(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One ingest of every source over a landing zone holding all the cases."""
    ws = tmp_path_factory.mktemp("bad_input")
    cfg = load_config("local", [f"storage.workspace={ws}", "ingest.settle_s=0", *SOURCES])  # landed before
    landing = Path(cfg.catalog.landing)
    png = _png()
    files = {rel: c.data for rel, c in CSV_CASES.items()}
    cut = {rel: len(png) // 2 - i for i, rel in enumerate(IMAGE_CASES)}  # each its own bytes: no duplicate delivery
    files |= {rel: b"" if r == "empty file" else png[: cut[rel]] if r else png for rel, r in IMAGE_CASES.items()}
    for rel, data in files.items():
        (landing / rel).parent.mkdir(parents=True, exist_ok=True)
        (landing / rel).write_bytes(data)
    store = DeltaStore(spark, cfg.storage.engine)
    old = spark.conf.get("spark.sql.files.maxPartitionBytes")
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(SPLIT_BYTES))
    try:
        splits = spark.read.text(str(landing / "t" / "split across reads.csv")).rdd.getNumPartitions()
        results = ingest(spark, cfg, store, "run-bad", ["t", "tab", "pipe", "img"])
    finally:
        spark.conf.set("spark.sql.files.maxPartitionBytes", old)
    return Run(landing, {f.file: f for r in results for f in r.files},
               {t: store.read(cfg.catalog.path(t)).collect() for t in ("t", "tab", "pipe", "img")},
               store.read(cfg.catalog.path("quarantine_rows")).collect(),
               {r.source_file: r.reason for r in store.read(cfg.catalog.path("quarantine_files")).collect()}, splits)


@pytest.mark.parametrize("rel", list(CSV_CASES))
def test_csv_file(run: Run, rel: str) -> None:
    """Each CSV file: quarantined as a file with its reason, or ingested with every record counted once."""
    case = CSV_CASES[rel]
    f = run.file(rel)
    if case.reason:
        assert (f.status, f.reason) == ("quarantined", run.quarantine_files[f.file])
        assert f.reason.startswith(case.reason)
        return
    assert (f.status, f.reason) == ("ingested", None) and f.file not in run.quarantine_files
    assert f.rows_in == _records(case, rel)
    assert (f.rows_ok, f.rows_quarantined) == (len(case.ids), len(case.bad))
    rows = [r for r in run.bronze[rel.split("/")[0]] if r._source_file == f.file]
    assert sorted(r.id for r in rows) == list(case.ids)
    bad = {r.raw_line: r.reason for r in run.quarantine_rows if r.source_file == f.file}
    assert len(bad) == len(case.bad)
    for raw, reason in case.bad:
        assert bad[raw.decode()].startswith(reason)


def test_values_exact(run: Run) -> None:
    """Big integers keep every digit (no float round trip), and a quoted newline stays inside its field."""
    by_file = {(Path(r._source_file).name, r.id): r for r in run.bronze["t"]}
    assert [by_file[("fields.csv", i)].big for i in (2, 3, 4, 5)] == [2**63 - 1, -(2**63), 9007199254740993, None]
    assert [by_file[("fields.csv", i)].flag for i in (1, 3, 4, 5)] == [True, True, False, True]
    names = [by_file[("quoted_newlines.csv", i)].name for i in (1, 2, 3, 4, 5)]
    assert names == ["two\nlines", "plain", 'three\r\nlines, "quoted"', "ends with newline\n", "last"]
    assert by_file[("flights 2013-01 \u00e9.csv", 1)].name == "spaces and accents"


def test_quoted_newlines_across_read_splits(run: Run) -> None:
    """Spark read one file in several splits with quoted newlines on the boundaries: each record is still one
    row (test_csv_file counts them), and each field holds its newline."""
    assert run.splits == 5
    rows = [r for r in run.bronze["t"] if r._source_file.endswith("/split across reads.csv")]
    assert len(rows) == 100 and all(r.name.startswith("line one\nline two ") for r in rows)


@pytest.mark.parametrize("rel", list(IMAGE_CASES))
def test_image_file(run: Run, rel: str) -> None:
    """Empty and truncated images are quarantined as files with the reason; names with spaces and accents are
    read like any other."""
    f = run.file(rel)
    reason = IMAGE_CASES[rel]
    rows = [r for r in run.bronze["img"] if r._source_file == f.file]
    if reason is None:
        assert (f.status, f.rows_ok, len(rows), rows[0].label, rows[0].width) == ("ingested", 1, 1, "3", 8)
        assert f.file not in run.quarantine_files
    else:
        assert (f.status, f.rows_quarantined, rows) == ("quarantined", 1, [])
        assert run.quarantine_files[f.file] == f.reason and f.reason.startswith(reason)
