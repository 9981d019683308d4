"""What the ingest log says was delivered: the keys that are never read again, the contents per file, and per source
the file that first delivered each content; then what choose_new makes of a listing against that log."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from pipelines.core.files import list_files
from pipelines.stages.ingest.deliveries import REDELIVERED, Deliveries, choose_new, ingested_files

pytestmark = pytest.mark.fast

A, B = "a" * 64, "b" * 64


def log(*rows: tuple[str, str, int, int, str, str | None]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["source", "file", "size", "mtime_ms", "status", "sha256"])


def test_the_log_becomes_deliveries() -> None:
    seen = ingested_files(log(("t", "f1", 10, 1, "ingested", A), ("t", "f2", 10, 2, "ingested", A),
                              ("t", "f3", 0, 3, "ingested", B), ("t", "f4", 5, 4, "quarantined", B),
                              ("u", "f5", 7, 5, "ingested", None), ("t", "f1", 11, 6, "ingested", B)))
    assert seen.keys == {("f1", 10, 1), ("f2", 10, 2), ("f3", 0, 3), ("f4", 5, 4), ("f5", 7, 5), ("f1", 11, 6)}
    assert seen.contents == {("f1", A), ("f2", A), ("f3", B), ("f4", B), ("f1", B)}
    assert seen.ingested == {"f1": {A, B}, "f2": {A}, "f3": {B}, "f5": {None}}  # quarantined: not ingested
    assert seen.firsts == {"t": {A: "f1", B: "f1"}}  # the first file per content; an empty file is no first
    assert ingested_files(None) == Deliveries()


def test_a_listing_against_the_log(tmp_path: Path) -> None:
    folder = tmp_path / "t"
    folder.mkdir()
    for name, data in {"same.csv": b"id\n1\n", "touched.csv": b"id\n2\n", "changed.csv": b"id\n3\n",
                       "new.csv": b"id\n4\n"}.items():
        (folder / name).write_bytes(data)
    landed = {Path(f.uri).name: f for f in list_files(str(folder), "*.csv")}
    sha = {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in landed}
    same, touched, changed = landed["same.csv"], landed["touched.csv"], landed["changed.csv"]
    seen = ingested_files(log(("t", same.uri, same.size, same.mtime_ms, "ingested", sha["same.csv"]),
                              ("t", touched.uri, touched.size, 1, "ingested", sha["touched.csv"]),
                              ("t", changed.uri, 99, 1, "ingested", A)))
    chosen = choose_new(list(landed.values()), seen, "t")
    assert [Path(f.uri).name for f in chosen.new] == ["new.csv"]
    assert same.uri not in chosen.hashes  # known by (size, mtime): not even read
    assert chosen.hashes[touched.uri] == sha["touched.csv"]  # read, same content: no new delivery, no quarantine
    [bad] = chosen.quarantined
    assert Path(bad.file).name == "changed.csv" and bad.status == "quarantined" and bad.sha256 == sha["changed.csv"]
    assert bad.reason == (f"{REDELIVERED}: sha256 {sha['changed.csv'][:12]}, the earlier delivery's content was "
                          f"sha256 {A[:12]}; its rows stay as first delivered. Deliver a correction under a new file "
                          "name")
