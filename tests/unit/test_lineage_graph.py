"""Building and rendering a lineage graph without tables or runs: nodes and edges added once, the text tree both
ways with repeats marked, the layered layout, the --key parser and the gold commit that added a data file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.core.errors import BadInput
from pipelines.stages.lineage.graph import LineageGraph, Node, _adding_commit, parse_key
from pipelines.stages.lineage.render import layout, summary, to_json, to_text

pytestmark = pytest.mark.fast


def graph() -> LineageGraph:
    """file -> ingest -> bronze -> train -> model, bronze also feeds a second train run; the start is the model."""
    g = LineageGraph("model:m/1")
    for node in (Node("file:a.csv", "landing_file", "a.csv", {"size": 10, "sha256": "ab"}),
                 Node("ingest:r1", "ingest_run", "ingest r1", {"run_id": "r1"}),
                 Node("bronze:3", "bronze_version", "bronze.flights@3", {"path": "/b", "operation": "WRITE"}),
                 Node("train:t1", "train_run", "train t1", {"run_id": "t1", "git_commit": ""}),
                 Node("train:t2", "train_run", "train t2", {"run_id": "t2"}),
                 Node("model:m/1", "model_version", "m v1", {"aliases": ["champion"], "run_id": "t1"})):
        g.add(node)
    assert g.add(Node("file:a.csv", "landing_file", "other")).label == "a.csv"  # the first one stays
    for src, dst, kind in (("file:a.csv", "ingest:r1", "read"), ("ingest:r1", "bronze:3", "wrote"),
                           ("bronze:3", "train:t1", "trained_on"), ("bronze:3", "train:t2", "trained_on"),
                           ("train:t1", "model:m/1", "logged"), ("train:t1", "model:m/1", "logged")):
        g.link(src, dst, kind)
    return g


def test_nodes_and_edges_are_kept_once_and_walk_both_ways() -> None:
    g = graph()
    assert len(g.nodes) == 6 and len(g.edges) == 5
    assert [e.src for e in g.inputs("model:m/1")] == ["train:t1"]
    assert [e.dst for e in g.outputs("bronze:3")] == ["train:t1", "train:t2"]
    assert [n.id for n in g.of_kind("train_run")] == ["train:t1", "train:t2"]
    assert summary(g) == {"landing_file": 1, "ingest_run": 1, "bronze_version": 1, "train_run": 2, "model_version": 1}
    data = json.loads(to_json(g))
    assert data["start"] == "model:m/1" and {"src": "ingest:r1", "dst": "bronze:3", "kind": "wrote"} in data["edges"]


def test_text_tree_shows_inputs_below_and_consumers_above() -> None:
    assert to_text(graph()).splitlines() == [
        "[model_version] m v1  (aliases=['champion'], run_id=t1)",
        "",
        "down (made from):",
        "    <-logged- [train_run] train t1  (run_id=t1)",
        "        <-trained_on- [bronze_version] bronze.flights@3  (path=/b, operation=WRITE)",
        "            <-wrote- [ingest_run] ingest r1  (run_id=r1)",
        "                <-read- [landing_file] a.csv  (size=10, sha256=ab)",
        "",
        "up (used by):",
        "    (nothing recorded uses it)",
    ]
    g = graph()
    g.start = "bronze:3"
    g.nodes["train:t2"].attrs["missing"] = "run deleted"
    up = to_text(g).split("up (used by):\n")[1].splitlines()
    assert up == ["    -trained_on-> [train_run] train t1  (run_id=t1)",
                  "        -logged-> [model_version] m v1  (aliases=['champion'], run_id=t1)",
                  "    -trained_on-> [train_run] train t2  (run_id=t2, MISSING: run deleted)"]


def test_a_node_reached_twice_is_marked_not_repeated() -> None:
    g = graph()
    g.link("ingest:r1", "train:t1", "wrote")  # a second path down to the ingest run
    down = to_text(g).split("up (used by):")[0]
    assert down.count("[ingest_run] ingest r1  (run_id=r1)") == 2 and down.count("(see above)") == 1
    assert down.count("[landing_file]") == 1


def test_layout_puts_each_kind_in_its_column() -> None:
    pos = layout(graph())
    assert pos["file:a.csv"] == (0.0, 0.0) and pos["model:m/1"] == (4.0, 0.0)
    assert pos["train:t1"] == (3.0, 0.5) and pos["train:t2"] == (3.0, -0.5)


def test_parse_key() -> None:
    assert parse_key("carrier=UA, flight = 1545,") == {"carrier": "UA", "flight": "1545"}
    assert parse_key("note=a=b") == {"note": "a=b"}
    with pytest.raises(BadInput, match="'flight' is not column=value"):
        parse_key("carrier=UA,flight")


def test_the_commit_that_added_a_data_file(tmp_path: Path) -> None:
    log = tmp_path / "gold" / "_delta_log"
    log.mkdir(parents=True)
    commits = [[{"commitInfo": {"operation": "WRITE"}}, {"add": {"path": "part-0.parquet"}}],
               [{"commitInfo": {"userMetadata": json.dumps({"run_id": "s1"})}},
                {"add": {"path": "date%3D2026-12-07/part-1.parquet"}}],
               [{"remove": {"path": "part-0.parquet"}}]]
    for version, actions in enumerate(commits):
        (log / f"{version:020d}.json").write_text("\n".join(json.dumps(a) for a in actions) + "\n")
    gold = str(tmp_path / "gold")
    assert _adding_commit(gold, f"file://{gold}/date=2026-12-07/part-1.parquet") == (1, {"run_id": "s1"})
    assert _adding_commit(gold, f"{gold}/part-0.parquet") == (0, {})
    assert _adding_commit(gold, f"{gold}/part-9.parquet") is None
