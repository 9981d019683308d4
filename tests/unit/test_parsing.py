"""Parsing and typing of landing files: the header sniff, CSV and JSON-lines values to typed columns, the reason a
bad row is quarantined with, and the joining of quoted multi-line CSV records."""

from __future__ import annotations

import math
from datetime import date

import pandas as pd
import pytest

from pipelines.core.config import SourceConf
from pipelines.stages.ingest.parse import _Records, parse_batch, sniff

pytestmark = pytest.mark.fast

COLUMNS = {"id": "bigint", "n": "int", "x": "double", "ok": "boolean", "day": "date", "name": "string"}
HEADER = "id,n,x,ok,day,name"


def source(**kw: object) -> SourceConf:
    return SourceConf(path="f/*.csv", table="bronze.f", columns=kw.pop("columns", COLUMNS), **kw)


def parse(lines: list[str | bytes], src: SourceConf | None = None) -> pd.DataFrame:
    src = src or source()
    raw = pd.Series([x if isinstance(x, bytes) else x.encode() for x in lines])
    return parse_batch(raw, pd.Series(["a.csv"] * len(lines)), src, {"a.csv": HEADER})


def test_sniff_accepts_the_declared_header_and_names_what_is_wrong() -> None:
    src = source()
    assert sniff(b"\xef\xbb\xbfID,n,x,ok,day,name\r\n1,2", 20, src) == ("ID,n,x,ok,day,name", None)  # names: any case
    assert sniff(b"", 0, src) == (None, "empty file")
    assert sniff(b"id\x00n", 4, src) == (None, "binary file: contains NUL bytes")
    assert sniff(b"\xff\xfeid", 4, src)[1] == "not a UTF-8 text file: first line does not decode"
    assert sniff(b"id;n;x;ok;day;name\n", 19, src)[1] == "wrong delimiter: expected ',', file uses ';'"
    reason = sniff(b"id,n,x\n", 7, src)[1]
    assert reason is not None and reason.startswith("header mismatch: expected ['id', 'n', 'x', 'ok', 'day'")
    assert sniff(b"1,2\n", 4, source(header=False)) == ("", None)


def test_sniff_json_lines() -> None:
    src = source(format="jsonl")
    assert sniff(b'{"id": 1}\n', 10, src) == ("", None)
    assert sniff(b"[1, 2]\n", 7, src) == (None, "not JSON lines: first line is not an object")
    assert sniff(b"id,n\n", 5, src)[1].startswith("not JSON lines: first line is not JSON")


def test_csv_values_become_typed_columns() -> None:
    out = parse([HEADER, "9007199254740993,7,2.5,TRUE,2024-02-29,Ann", "", "-1,3.0,1e2,0,2024-01-01,NA"])
    assert list(out["_kind"]) == ["header", "ok", "blank", "ok"]
    ok = out[out["_kind"] == "ok"]
    assert list(ok["id"]) == [9007199254740993, -1]  # exact past 2**53: never through float
    assert str(ok["id"].dtype) == "Int64" and str(ok["n"].dtype) == "Int32"
    assert list(ok["n"]) == [7, 3]  # an integral decimal is an exact integer
    assert list(ok["x"]) == [2.5, 100.0]
    assert list(ok["ok"]) == [True, False]
    assert list(ok["day"]) == [date(2024, 2, 29), date(2024, 1, 1)]
    assert ok["name"].iloc[0] == "Ann" and ok["name"].iloc[1] is None  # NA is a null value
    assert list(out["_raw"])[1] == "9007199254740993,7,2.5,TRUE,2024-02-29,Ann"
    assert set(out["_source_file"]) == {"a.csv"}


@pytest.mark.parametrize(("line", "reason"), [
    ("1,2,3", "wrong field count: expected 6, got 3"),
    ("x1,2,3.0,true,2024-01-01,a", "unparsable bigint in column id: 'x1'"),
    ("1,2.5,3.0,true,2024-01-01,a", "unparsable int in column n: '2.5'"),
    ("1,2147483648,3.0,true,2024-01-01,a", "int out of range in column n: '2147483648'"),
    ("1,2,abc,true,2024-01-01,a", "unparsable double in column x: 'abc'"),
    ("1,2,3.0,yes,2024-01-01,a", "unparsable boolean in column ok: 'yes'"),
    ("1,2,3.0,true,2023-02-29,a", "unparsable date in column day: '2023-02-29'"),
    ('1,2,3.0,true,2024-01-01,"a"b', "malformed quoting: ',' expected after '\"'"),
])
def test_bad_csv_rows_say_why(line: str, reason: str) -> None:
    out = parse([line])
    assert (out["_kind"].iloc[0], out["_reason"].iloc[0], out["_raw"].iloc[0]) == ("bad", reason, line)


def test_bad_encoding_is_quarantined_with_the_text_kept() -> None:
    out = parse([b"1,2,3.0,true,2024-01-01,caf\xe9"])
    assert out["_kind"].iloc[0] == "bad" and out["_reason"].iloc[0] == "bad encoding: not valid UTF-8"
    assert out["_raw"].iloc[0].startswith("1,2,3.0,true,2024-01-01,caf")


def test_timestamps_follow_the_declared_format() -> None:
    src = source(columns={"at": "timestamp"}, header=False, timestamp_format="%d/%m/%Y %H:%M")
    out = parse(["07/12/2026 16:30", "2026-12-07"], src)
    assert out["at"].iloc[0] == pd.Timestamp("2026-12-07 16:30", tz="UTC")
    assert out["_reason"].iloc[1] == "unparsable timestamp in column at: '2026-12-07'"


def test_json_lines_values_in_declared_order() -> None:
    src = source(format="jsonl", columns={"id": "bigint", "ok": "boolean", "tags": "string", "x": "double"})
    out = parse(['{"x": 1.5, "id": 3, "ok": false, "tags": ["a", 1]}', '{"id": 4}', "[1]", '{"id": 5', '{"id": "z"}'],
                src)
    assert list(out["_kind"]) == ["ok", "ok", "bad", "bad", "bad"]
    assert (out["id"].iloc[0], out["ok"].iloc[0], out["tags"].iloc[0], out["x"].iloc[0]) == (3, False, '["a", 1]', 1.5)
    assert out["ok"].isna().iloc[1] and math.isnan(out["x"].iloc[1])  # absent keys are null, not bad
    assert out["_reason"].iloc[2] == "JSON line is not an object but list"
    assert out["_reason"].iloc[3].startswith("invalid JSON: Expecting ',' delimiter")
    assert out["_reason"].iloc[4] == "unparsable bigint in column id: 'z'"


def test_quoted_newlines_join_into_one_record_and_a_stray_quote_stands_alone() -> None:
    records = _Records(source(columns={"a": "string", "b": "string"}, header=False))
    assert records.feed(b"1,plain") == [b"1,plain"]
    assert records.feed(b'2,"first') == []
    assert records.feed(b'second"') == [b'2,"first\nsecond"']
    assert records.feed(b'3,"stray') == []
    assert records.feed(b"4,next") == []
    assert records.end_of_file() == [b'3,"stray', b"4,next"]  # never closed: the opening line alone, the rest re-read
    assert parse([b'2,"first\nsecond"'], source(columns={"a": "string", "b": "string"}, header=False))[
        "b"].iloc[0] == "first\nsecond"
