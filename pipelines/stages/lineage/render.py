"""Rendering a LineageGraph: an indented text tree (inputs below the start, consumers above), a layered PNG drawn
with matplotlib alone (one column per node kind, inputs on the left), and JSON (nodes and edges)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.stages.lineage.graph import KINDS, LineageGraph, Node

# The attributes a text line shows per kind (all of them are in the JSON).
SHOWN = {
    "prediction": ("model_name", "model_version", "model_run_id", "input_table_version", "probability",
                   "prediction", "scored_at", "gold_version", "written_in_version"),
    "predictions": ("version", "rows", "first_date", "last_date", "dates"),
    "score_run": ("run_id", "git_commit", "commit_git_commit"),
    "model_version": ("aliases", "run_id"),
    "train_run": ("run_id", "git_commit", "features_run_id", "feature_table_version"),
    "feature_table_version": ("path", "operation"),
    "preprocessing": ("path", "model_uri"),
    "features_run": ("run_id", "git_commit", "bronze_versions"),
    "bronze_version": ("path", "operation"),
    "ingest_run": ("run_id", "wrote", "git_commit", "mlflow"),
    "landing_file": ("size", "sha256"),
}


def _line(node: Node) -> str:
    shown = [f"{k}={node.attrs[k]}" for k in SHOWN.get(node.kind, ()) if node.attrs.get(k) not in (None, "", [])]
    git = node.attrs.get("commit", {}).get("git_commit")
    if git:
        shown.append(f"git_commit={git}")
    if node.attrs.get("missing"):
        shown.append(f"MISSING: {node.attrs['missing']}")
    return f"[{node.kind}] {node.label}" + (f"  ({', '.join(shown)})" if shown else "")


def _tree(graph: LineageGraph, node_id: str, down: bool, depth: int, seen: set[str], out: list[str]) -> None:
    edges = graph.inputs(node_id) if down else graph.outputs(node_id)
    for e in edges:
        other = e.src if down else e.dst
        arrow = f"<-{e.kind}-" if down else f"-{e.kind}->"
        again = other in seen
        out.append("    " * depth + f"{arrow} {_line(graph.nodes[other])}" + ("  (see above)" if again else ""))
        if not again:
            seen.add(other)
            _tree(graph, other, down, depth + 1, seen, out)


def to_text(graph: LineageGraph) -> str:
    """The start node, then what it was made from (down), then what was made from it (up)."""
    start = graph.nodes[graph.start]
    out = [_line(start), "", "down (made from):"]
    _tree(graph, graph.start, True, 1, {graph.start}, out)
    out += ["", "up (used by):"]
    before = len(out)
    _tree(graph, graph.start, False, 1, {graph.start}, out)
    if len(out) == before:
        out.append("    (nothing recorded uses it)")
    return "\n".join(out)


def to_json(graph: LineageGraph) -> str:
    return json.dumps(graph.to_dict(), indent=2, default=str)


COLORS = {"landing_file": "#f2e6d9", "ingest_run": "#d9e6f2", "bronze_version": "#cd7f32", "features_run": "#d9e6f2",
          "preprocessing": "#e6f2d9", "feature_table_version": "#c0c0c0", "train_run": "#d9e6f2",
          "model_version": "#b3d9b3", "score_run": "#d9e6f2", "predictions": "#ffd700", "prediction": "#ffd700"}


def layout(graph: LineageGraph) -> dict[str, tuple[float, float]]:
    """(x, y) per node: x is the kind's column in the chain, nodes of one column spread evenly on y."""
    columns: dict[int, list[Node]] = {}
    for node in graph.nodes.values():
        columns.setdefault(KINDS.index(node.kind), []).append(node)
    used = sorted(columns)
    pos: dict[str, tuple[float, float]] = {}
    for x, col in enumerate(used):
        nodes = sorted(columns[col], key=lambda n: n.label)
        for i, n in enumerate(nodes):
            pos[n.id] = (float(x), (len(nodes) - 1) / 2 - i)
    return pos


def to_png(graph: LineageGraph, path: str | Path) -> Path:
    """Draw the graph left (inputs) to right (consumers) and save it as a PNG; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pos = layout(graph)
    width = max(x for x, _ in pos.values()) + 1
    height = max((abs(y) for _, y in pos.values()), default=0) * 2 + 1
    fig, ax = plt.subplots(figsize=(max(6.0, 2.6 * width), max(3.0, 0.7 * height + 1)))
    for e in graph.edges:
        (x1, y1), (x2, y2) = pos[e.src], pos[e.dst]
        bend = 0.2 if abs(x2 - x1) > 1 else 0.0  # an edge skipping a column curves around its boxes
        ax.annotate("", xy=(x2 - 0.28, y2), xytext=(x1 + 0.28, y1),
                    arrowprops={"arrowstyle": "->", "color": "#555555", "lw": 0.8,
                                "connectionstyle": f"arc3,rad={bend}"})
    for node_id, (x, y) in pos.items():
        node = graph.nodes[node_id]
        edge = "red" if node_id == graph.start else "black"
        label = node.label if len(node.label) <= 34 else node.label[:31] + "..."
        ax.text(x, y, f"{node.kind}\n{label}", ha="center", va="center", fontsize=6.5,
                bbox={"boxstyle": "round,pad=0.3", "fc": COLORS.get(node.kind, "white"), "ec": edge,
                      "lw": 1.6 if node_id == graph.start else 0.6})
    ax.set_xlim(-0.6, width - 0.4)
    ax.set_ylim(-height / 2 - 0.2, height / 2 + 0.2)
    ax.axis("off")
    ax.set_title(f"lineage of {graph.nodes[graph.start].label}", fontsize=9)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out


def summary(graph: LineageGraph) -> dict[str, Any]:
    """Nodes per kind (for logs)."""
    out: dict[str, int] = {}
    for n in graph.nodes.values():
        out[n.kind] = out.get(n.kind, 0) + 1
    return out
