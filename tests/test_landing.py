"""The landing zone's delivery rules without a JVM: writers' names, settling, modification times of every file
system, symbolic links, and which listed files are new deliveries (duplicates, re-deliveries, vanished files)."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipelines.core.files import FileInfo, list_files, modified_ms
from pipelines.core.landing import Settling, literal_folder, split_writer_names, writer_name
from pipelines.stages.ingest.deliveries import DUPLICATE, REDELIVERED, Deliveries, choose_new

pytestmark = pytest.mark.fast  # the fast tier: no JVM, cluster or training process


def test_writer_names_are_ignored_below_the_sources_own_folders() -> None:
    assert [writer_name(p, 1) for p in ("t/a.csv", "t/.a.csv", "t/_a.csv", "t/a.csv._COPYING_", "t/a.csv.tmp",
                                        "t/.staging/a.csv", "t/_tmp/x/a.csv", "t/x/a.tmp.csv")] == [
        False, True, True, True, True, True, True, False]
    assert not writer_name("_archive/a.csv", 1)  # a folder the configuration names is the source's own
    assert writer_name("_archive/a.csv", 0)
    assert [literal_folder(p) for p in ("t/*.csv", "img/**", "*.csv", "a/b/*/c.csv", "a/[xy]/c.csv")] == [
        1, 1, 0, 2, 1]
    listing = [FileInfo(f"hdfs://127.0.0.1:9000/ws/tables/landing/t/{n}", 1, 1)
               for n in ("a.csv", "b.csv._COPYING_", ".c.csv")]
    keep, ignored = split_writer_names(listing, "hdfs://127.0.0.1:9000/ws/tables/landing", "t/*")
    assert [f.uri.rsplit("/", 1)[1] for f in keep] == ["a.csv"] and len(ignored) == 2


def test_a_file_settles_once_unchanged_for_settle_s_on_the_observers_clock() -> None:
    now = [100.0]
    watch = Settling(5, clock=lambda: now[0])
    a, b = FileInfo("file:///l/a.csv", 10, 1), FileInfo("file:///l/b.csv", 10, 1)
    assert watch.observe([a, b]) == []
    now[0] = 104.0
    grown = FileInfo(b.uri, 20, 2)
    assert watch.observe([a, grown]) == []
    now[0] = 105.0
    assert watch.observe([a, grown]) == [a]  # b changed at 104: its five seconds start again
    now[0] = 109.0
    assert watch.observe([a, grown]) == [a, grown]
    assert watch.observe([a]) == [a]
    now[0] = 120.0
    assert watch.observe([a, grown]) == [a]  # b vanished in between: watched afresh when it is back
    assert Settling(0).observe([a]) == [a]


def test_modification_time_of_each_file_system() -> None:
    when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    ms = int(when.timestamp() * 1000)
    assert modified_ms({"modification_time": ms, "access_time": 0}) == ms  # hdfs-native: milliseconds
    assert modified_ms({"mtime": when.timestamp()}) == ms  # local: seconds
    assert modified_ms({"LastModified": when}) == ms  # s3fs
    assert modified_ms({"last_modified": when}) == ms  # adlfs
    assert modified_ms({"size": 3}) == -1  # unknown: never taken for a known delivery (see choose_new)


def test_symbolic_links_get_a_reason(tmp_path: Path) -> None:
    zone = tmp_path / "landing"
    (zone / "t").mkdir(parents=True)
    (zone / "other").mkdir()
    (zone / "other" / "c.csv").write_bytes(b"id\n1\n")
    (tmp_path / "secret.csv").write_bytes(b"id\n9\n")
    (zone / "t" / "in.csv").symlink_to(zone / "other" / "c.csv")
    (zone / "t" / "out.csv").symlink_to(tmp_path / "secret.csv")
    (zone / "t" / "relative-out.csv").symlink_to("../../secret.csv")
    (zone / "t" / "gone.csv").symlink_to(zone / "other" / "missing.csv")
    listed = {Path(f.uri).name: f for f in list_files(str(zone), "t/*.csv")}
    assert sorted(listed) == ["gone.csv", "in.csv", "out.csv", "relative-out.csv"]
    assert listed["in.csv"].refused is None and listed["in.csv"].size == 5
    for name in ("out.csv", "relative-out.csv"):
        assert listed[name].refused.startswith("symbolic link leading outside the landing zone")
        assert str(tmp_path / "secret.csv") in listed[name].refused
    assert listed["gone.csv"].refused.startswith("dangling symbolic link")


def _land(folder: Path, files: dict[str, bytes]) -> list[FileInfo]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return list_files(str(folder), "*.csv")


def test_duplicates_redeliveries_and_vanished_files(tmp_path: Path) -> None:
    """Content first ingested under one name is quarantined under any other (this run or an earlier one), naming
    the first; an empty file is no duplicate; a file removed after the listing is reported vanished."""
    old = b"id\n1\n"
    landed = _land(tmp_path / "t", {"a.csv": b"id\n2\n", "b.csv": b"id\n2\n", "c.csv": old, "d.csv": b"id\n3\n",
                                    "e.csv": b"", "f.csv": b"", "g.csv": b"id\n4\n"})
    sha_old = hashlib.sha256(old).hexdigest()
    seen = Deliveries(firsts={"t": {sha_old: "file:///x/old.csv"}})
    seen.ingested[landed[3].uri] = {"f" * 64}  # d.csv: an earlier delivery under this name had other content
    os.remove(tmp_path / "t" / "g.csv")
    chosen = choose_new(landed, seen, "t")
    assert [Path(f.uri).name for f in chosen.new] == ["a.csv", "e.csv", "f.csv"]
    reasons = {Path(f.file).name: f.reason for f in chosen.quarantined}
    assert sorted(reasons) == ["b.csv", "c.csv", "d.csv"]
    assert reasons["b.csv"].startswith(DUPLICATE) and landed[0].uri in reasons["b.csv"]
    assert reasons["c.csv"].startswith(DUPLICATE) and "file:///x/old.csv" in reasons["c.csv"]
    assert reasons["d.csv"].startswith(REDELIVERED)
    assert [(Path(f.file).name, f.status) for f in chosen.vanished] == [("g.csv", "vanished")]
    assert chosen.hashes[landed[0].uri] == hashlib.sha256(b"id\n2\n").hexdigest()


def test_stream_gate_admits_each_complete_file_once(tmp_path: Path) -> None:
    """The streaming scorer's gate: a file is admitted (one manifest naming it) once it has settled, once; a
    refused link at once, with its reason, for the batch to quarantine; writers' names never."""
    import json
    import time

    from pipelines.core.config import load_config
    from pipelines.stages.score.stream import LandingGate

    cfg = load_config("local", [f"storage.workspace={tmp_path / 'ws'}", "ingest.settle_s=0.3"])
    zone = Path(cfg.catalog.landing) / "in"
    zone.mkdir(parents=True)
    (zone / "a.csv").write_bytes(b"id\n")
    (zone / ".a.csv.part").write_bytes(b"id\n")
    (zone / "gone.csv").symlink_to(tmp_path / "nothing.csv")
    gate = LandingGate(cfg, "in/*", str(tmp_path / "checkpoint"))
    assert gate.step() == 1 and [Path(u).name for u in gate.deferred] == ["a.csv"]  # the link, at once
    time.sleep(0.35)
    (zone / "a.csv").write_bytes(b"id\n1\n")  # still being written
    assert gate.step() == 0 and [Path(u).name for u in gate.deferred] == ["a.csv"]
    time.sleep(0.35)
    assert gate.step() == 1 and gate.deferred == []
    assert gate.step() == 0
    manifests = sorted((json.loads(p.read_text()) for p in (tmp_path / "checkpoint" / "settled").iterdir()),
                       key=lambda m: m["uri"])
    assert [(Path(m["uri"]).name, m["size"], (m["refused"] or "").split(":")[0]) for m in manifests] == [
        ("a.csv", 5, ""), ("gone.csv", len(str(tmp_path / "nothing.csv")), "dangling symbolic link")]
