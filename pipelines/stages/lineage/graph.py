"""Lineage: from a gold prediction row, a registered model version, a table version or a landing file, the whole
chain down to its inputs and up to its consumers, built only from what the jobs record (never guessed):

- gold rows carry model_name, model_version, model_run_id and input_table_version; a gold commit records the
  score run and git commit (found through the commit that added the row's data file);
- a model version's run_id is its training run, whose tags name the features run and feature table version;
- a features run's record names its bronze versions and preprocessing model; its table commit its run id;
- a bronze table version holds the rows of the ingest runs named by its `_run_id` column; the ingest log names
  each run's landing files with size and sha256; bronze commits record the ingest run's git commit.

Edges point from the input to what was made from it. Rendering (text, PNG, JSON) is in render.py beside it.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from datetime import date
from functools import cache
from typing import Any
from urllib.parse import unquote

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.core import files
from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore
from pipelines.core.errors import BadInput
from pipelines.core.recorder import FEATURES_JOB, features_record
from pipelines.core.tracking import configure_mlflow

# Node kinds in the order of the chain (the PNG's layers, left to right).
KINDS = ("landing_file", "ingest_run", "bronze_version", "features_run", "preprocessing", "feature_table_version",
         "train_run", "model_version", "score_run", "predictions", "prediction")


@dataclass
class Node:
    id: str
    kind: str
    label: str
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Edge:
    src: str  # the input
    dst: str  # what was made from it
    kind: str


@dataclass
class LineageGraph:
    """Nodes by id and edges (input -> output) around one starting node."""

    start: str
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)

    def add(self, node: Node) -> Node:
        return self.nodes.setdefault(node.id, node)

    def link(self, src: str, dst: str, kind: str) -> None:
        if Edge(src, dst, kind) not in self.edges:
            self.edges.append(Edge(src, dst, kind))

    def inputs(self, node_id: str) -> list[Edge]:
        return [e for e in self.edges if e.dst == node_id]

    def outputs(self, node_id: str) -> list[Edge]:
        return [e for e in self.edges if e.src == node_id]

    def of_kind(self, kind: str) -> list[Node]:
        return [n for n in self.nodes.values() if n.kind == kind]

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start,
                "nodes": [{"id": n.id, "kind": n.kind, "label": n.label, "attrs": n.attrs}
                          for n in self.nodes.values()],
                "edges": [{"src": e.src, "dst": e.dst, "kind": e.kind} for e in self.edges]}


def _run(client: MlflowClient, run_id: str) -> Any | None:
    try:
        return client.get_run(run_id)
    except MlflowException:
        return None


class Walker:
    """Walks the records of one workspace (Delta tables, ingest log, MLflow) and builds a LineageGraph."""

    def __init__(self, cfg: Config, store: DeltaStore, start: str) -> None:
        configure_mlflow(cfg)
        self.cfg, self.store, self.client = cfg, store, MlflowClient()
        self.graph = LineageGraph(start)
        self.sources = {src.table: name for name, src in cfg.ingest.sources.items()}  # bronze table -> source
        self._down: set[str] = set()
        self._up: set[str] = set()
        self._log: dict[str, list[dict[str, Any]]] | None = None
        self.runs_in = cache(self._runs_in)
        self.history = cache(self._history)

    # ---- facts ---------------------------------------------------------------------------------------------------
    def _history(self, table: str) -> dict[int, dict[str, Any]]:
        return {h["version"]: h for h in self.store.history(self.cfg.catalog.path(table))}

    def _runs_in(self, table: str, version: int) -> tuple[str, ...]:
        """The ingest runs whose rows bronze `table` holds at `version` (its `_run_id` column)."""
        df = self.store.read(self.cfg.catalog.path(table), version)
        return tuple(sorted(r[0] for r in df.select("_run_id").distinct().collect() if r[0] is not None))

    def _check_table(self, table: str, version: int) -> None:
        path = self.cfg.catalog.path(table)
        latest = self.store.version(path)
        if latest is None:
            raise BadInput(f"lineage: no table {table!r} at {path}")
        if not 0 <= version <= latest or version not in self.history(table):
            raise BadInput(f"lineage: table {table!r} has no version {version} (latest is {latest}, history "
                           f"keeps {sorted(self.history(table))})")

    def _model_version(self, name: str, version: str | None, alias: str | None) -> Any:
        try:
            return (self.client.get_model_version(name, str(version)) if version is not None
                    else self.client.get_model_version_by_alias(name, alias or "champion"))
        except MlflowException as e:
            asked = f"version {version}" if version is not None else f"alias {alias!r}"
            raise BadInput(f"lineage: registered model {name!r} has no {asked} ({e.error_code})") from None

    # ---- nodes ---------------------------------------------------------------------------------------------------
    def table_node(self, table: str, version: int) -> str:
        self._check_table(table, version)
        commit = self.history(table)[version]
        kind = ("feature_table_version" if table == "features" else
                "predictions" if table == "predictions" else "bronze_version")
        node = self.graph.add(Node(f"table:{table}@{version}", kind, f"{table} v{version}", {
            "table": table, "path": self.cfg.catalog.path(table), "version": version,
            "operation": commit["operation"], "timestamp_ms": commit["timestamp"], "commit": commit["metadata"]}))
        return node.id

    def run_node(self, run_id: str, kind: str) -> str:
        run = _run(self.client, run_id)
        attrs: dict[str, Any] = {"run_id": run_id, "mlflow": run is not None}
        if run is not None:
            attrs |= {"job": run.data.tags.get("job"), "status": run.info.status,
                      "git_commit": run.data.tags.get("git_commit"), "start_time_ms": run.info.start_time}
        return self.graph.add(Node(f"run:{run_id}", kind, f"{kind.removesuffix('_run')} run {run_id[:12]}",
                                   attrs)).id

    def model_node(self, mv: Any) -> str:
        aliases = list(getattr(mv, "aliases", []) or [])
        return self.graph.add(Node(f"model:{mv.name}/{mv.version}", "model_version", f"{mv.name} v{mv.version}", {
            "name": mv.name, "version": str(mv.version), "aliases": aliases, "run_id": mv.run_id,
            "source": mv.source, "tags": dict(mv.tags)})).id

    # ---- down: inputs --------------------------------------------------------------------------------------------
    def _walk(self, node_id: str, seen: set[str], steps: dict[str, Any]) -> None:
        """Visit `node_id` once per direction: the step for its kind adds its neighbours and walks on."""
        if node_id in seen:
            return
        seen.add(node_id)
        node = self.graph.nodes[node_id]
        step = steps.get(node.kind)
        if step:
            step(node)

    def down(self, node_id: str) -> None:
        self._walk(node_id, self._down, {
            "prediction": self._down_prediction, "model_version": self._down_model, "train_run": self._down_train,
            "feature_table_version": self._down_feature_table, "features_run": self._down_features,
            "bronze_version": self._down_bronze, "predictions": self._down_predictions})

    def _down_prediction(self, node: Node) -> None:
        a = node.attrs
        mv = self._model_version(a["model_name"], a["model_version"], None)
        if mv.run_id != a["model_run_id"]:
            raise RuntimeError(f"lineage: the gold row names run {a['model_run_id']} for {mv.name} v{mv.version} "
                               f"but the registry says {mv.run_id}")
        model = self.model_node(mv)
        self.graph.link(model, node.id, "predicted")
        source = self.cfg.features.source_table
        bronze = self.table_node(source, int(a["input_table_version"]))
        self.graph.link(bronze, node.id, "scored_input")
        if a.get("score_run_id"):
            score = self.run_node(a["score_run_id"], "score_run")
            self.graph.nodes[score].attrs.setdefault("commit_git_commit", a.get("commit_git_commit"))
            self.graph.link(score, node.id, "wrote")
        for n in (model, bronze):
            self.down(n)

    def _down_predictions(self, node: Node) -> None:
        """A gold table version: the model versions and score runs its rows name."""
        rows = (self.store.read(self.cfg.catalog.path("predictions"), node.attrs["version"])
                .groupBy("model_name", "model_version", "model_run_id", "input_table_version").count().collect())
        node.attrs["by_model"] = [r.asDict() for r in rows]
        for r in rows:
            mv = self._model_version(r["model_name"], r["model_version"], None)
            model = self.model_node(mv)
            self.graph.link(model, node.id, "predicted")
            self.down(model)

    def _down_model(self, node: Node) -> None:
        train = self.run_node(node.attrs["run_id"], "train_run")
        self.graph.link(train, node.id, "registered")
        self.down(train)

    def _down_train(self, node: Node) -> None:
        run = _run(self.client, node.attrs["run_id"])
        if run is None:
            raise RuntimeError(f"lineage: training run {node.attrs['run_id']} is not in the tracking store")
        tags = run.data.tags
        node.attrs |= {"features_run_id": tags.get("features_run_id"),
                       "feature_table_version": tags.get("feature_table_version")}
        if "features_run_id" not in tags or "feature_table_version" not in tags:
            node.attrs["missing"] = "the run records no features_run_id / feature_table_version"
            return
        table = self.table_node("features", int(tags["feature_table_version"]))
        self.graph.link(table, node.id, "trained_on")
        features = self.run_node(tags["features_run_id"], "features_run")
        record = features_record(self.cfg, tags["features_run_id"])
        prep = self.graph.add(Node(f"preprocessing:{record.run_id}", "preprocessing",
                                   f"preprocessing {record.run_id[:12]}",
                                   {"path": record.model_path, "model_uri": record.model_uri})).id
        self.graph.link(features, prep, "fitted")
        self.graph.link(prep, node.id, "packaged_with")
        self.down(table)
        self.down(features)

    def _down_feature_table(self, node: Node) -> None:
        run_id = node.attrs["commit"].get("run_id")
        if not run_id:
            node.attrs["missing"] = "the commit records no features run"
            return
        run = self.run_node(run_id, "features_run")
        self.graph.link(run, node.id, "wrote")
        self.down(run)

    def _down_features(self, node: Node) -> None:
        record = features_record(self.cfg, node.attrs["run_id"])
        node.attrs["bronze_versions"] = record.bronze_versions
        for table, version in sorted(record.bronze_versions.items()):
            bronze = self.table_node(table, version)
            self.graph.link(bronze, node.id, "read")
            self.down(bronze)

    def _down_bronze(self, node: Node) -> None:
        table, version = node.attrs["table"], node.attrs["version"]
        log = self._ingest_log()
        source = self.sources.get(table)
        for run_id in self.runs_in(table, version):
            run = self.ingest_run_node(run_id, table)
            self.graph.link(run, node.id, "rows_in")
            for f in log.get(run_id, []):
                if f["source"] == source and f["status"] == "ingested":
                    self.graph.link(self.file_node(f), run, "ingested")

    def ingest_run_node(self, run_id: str, table: str) -> str:
        """An ingest run's part for one bronze table: the version it wrote there and the git commit that commit
        records (the chain's ingest needs no MLflow run; the commit has it either way)."""
        node_id = f"ingest:{run_id}:{table}"
        if node_id in self.graph.nodes:
            return node_id
        run = _run(self.client, run_id)
        attrs: dict[str, Any] = {"run_id": run_id, "table": table, "mlflow": run is not None, "wrote": None,
                                 "git_commit": run.data.tags.get("git_commit") if run is not None else None}
        for v, commit in sorted(self.history(table).items()):
            if commit["metadata"].get("run_id") == run_id and commit["operation"] != "DELETE":
                attrs["wrote"] = v
                attrs["git_commit"] = attrs["git_commit"] or commit["metadata"].get("git_commit")
        self.graph.add(Node(node_id, "ingest_run", f"ingest run {run_id[:12]} -> {table}", attrs))
        return node_id

    def _ingest_log(self) -> dict[str, list[dict[str, Any]]]:
        """The ingest log's files by run id (read once per walk)."""
        if self._log is None:
            path = self.cfg.catalog.path("ingest_log")
            self._log = {}
            for r in self.store.read(path).collect() if self.store.exists(path) else []:
                self._log.setdefault(r["run_id"], []).append(r.asDict())
        return self._log

    def file_node(self, f: dict[str, Any]) -> str:
        return self.graph.add(Node(f"file:{f['file']}", "landing_file", posixpath.basename(f["file"]), {
            "file": f["file"], "name": posixpath.basename(f["file"]), "source": f["source"], "size": f["size"],
            "sha256": f.get("sha256"), "status": f["status"], "run_id": f["run_id"]})).id

    # ---- up: consumers -------------------------------------------------------------------------------------------
    def up(self, node_id: str) -> None:
        self._walk(node_id, self._up, {
            "landing_file": self._up_file, "ingest_run": self._up_ingest, "bronze_version": self._up_bronze,
            "features_run": self._up_features, "preprocessing": self._up_preprocessing,
            "feature_table_version": self._up_feature_table, "train_run": self._up_train,
            "model_version": self._up_model})

    def _up_file(self, node: Node) -> None:
        run = self.ingest_run_node(node.attrs["run_id"], self._table_of(node.attrs["source"]))
        self.graph.link(node.id, run, "ingested")
        self.up(run)

    def _table_of(self, source: str) -> str:
        return self.cfg.ingest.sources[source].table

    def _up_ingest(self, node: Node) -> None:
        """Every bronze version holding the run's rows that a features run or a score read."""
        table = node.attrs["table"]
        for version in sorted(self._versions_read(table)):
            if node.attrs["run_id"] in self.runs_in(table, version):
                bronze = self.table_node(table, version)
                self.graph.link(node.id, bronze, "rows_in")
                self.up(bronze)

    def _versions_read(self, table: str) -> set[int]:
        tag = f"table_version.bronze.{table}"
        runs = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                  filter_string=f"tags.job = '{FEATURES_JOB}' and tags.`{tag}` != ''")
        read = {int(r.data.tags[tag]) for r in runs if r.data.tags.get(tag, "").isdigit()}
        if table == self.cfg.features.source_table and self._gold() is not None:
            read |= {int(r[0]) for r in self._gold().select("input_table_version").distinct().collect()}
        return read

    def _gold(self) -> DataFrame | None:
        path = self.cfg.catalog.path("predictions")
        return self.store.read(path) if self.store.exists(path) else None

    def _up_bronze(self, node: Node) -> None:
        table, version = node.attrs["table"], node.attrs["version"]
        tag = f"table_version.bronze.{table}"
        for r in mlflow.search_runs(search_all_experiments=True, output_format="list",
                                    filter_string=f"tags.job = '{FEATURES_JOB}' and tags.`{tag}` = '{version}'"):
            run = self.run_node(r.info.run_id, "features_run")
            self.graph.link(node.id, run, "read")
            self.up(run)
        if table == self.cfg.features.source_table:
            self._predictions_up(node.id, F.col("input_table_version") == version, "scored_input")

    def _up_features(self, node: Node) -> None:
        record = features_record(self.cfg, node.attrs["run_id"])
        table = self.table_node("features", record.table_version)
        self.graph.link(node.id, table, "wrote")
        prep = self.graph.add(Node(f"preprocessing:{record.run_id}", "preprocessing",
                                   f"preprocessing {record.run_id[:12]}",
                                   {"path": record.model_path, "model_uri": record.model_uri})).id
        self.graph.link(node.id, prep, "fitted")
        self.up(table)

    def _up_preprocessing(self, node: Node) -> None:
        return  # reached through the train runs of its feature table version

    def _up_feature_table(self, node: Node) -> None:
        version = node.attrs["version"]
        for r in mlflow.search_runs(search_all_experiments=True, output_format="list",
                                    filter_string=f"tags.feature_table_version = '{version}' and "
                                                  f"tags.job = 'train'"):
            if r.data.tags.get("features_run_id") != node.attrs["commit"].get("run_id"):
                continue
            run = self.run_node(r.info.run_id, "train_run")
            self.graph.link(node.id, run, "trained_on")
            prep = f"preprocessing:{r.data.tags['features_run_id']}"
            if prep in self.graph.nodes:
                self.graph.link(prep, run, "packaged_with")
            self.up(run)

    def _up_train(self, node: Node) -> None:
        for mv in self.client.search_model_versions(f"run_id = '{node.attrs['run_id']}'"):
            model = self.model_node(self.client.get_model_version(mv.name, mv.version))
            self.graph.link(node.id, model, "registered")
            self.up(model)

    def _up_model(self, node: Node) -> None:
        a = node.attrs
        self._predictions_up(node.id, (F.col("model_name") == a["name"]) & (F.col("model_version") == a["version"]),
                             "predicted")

    def _predictions_up(self, src: str, condition: Any, kind: str) -> None:
        """The current gold rows matching `condition`, one node per model version: rows, dates, gold version."""
        gold = self._gold()
        if gold is None:
            return
        date_col = _date_column(self.cfg, gold)
        aggs = [F.count("*").alias("rows")]
        if date_col:
            aggs += [F.min(date_col).alias("first"), F.max(date_col).alias("last"),
                     F.countDistinct(date_col).alias("dates")]
        gold_version = self.store.version(self.cfg.catalog.path("predictions"))
        for r in gold.filter(condition).groupBy("model_name", "model_version").agg(*aggs).collect():
            model_id = f"model:{r['model_name']}/{r['model_version']}"
            node = self.graph.add(Node(f"predictions:{model_id}", "predictions",
                                       f"predictions by {r['model_name']} v{r['model_version']}",
                                       {"table": "predictions", "path": self.cfg.catalog.path("predictions"),
                                        "version": gold_version, "model": model_id, "rows": int(r["rows"]),
                                        **({"first_date": str(r["first"]), "last_date": str(r["last"]),
                                            "dates": int(r["dates"])} if date_col else {})}))
            self.graph.link(src, node.id, kind)
            if kind != "predicted" and model_id not in self.graph.nodes:
                mv = self._model_version(r["model_name"], r["model_version"], None)
                self.graph.link(self.model_node(mv), node.id, "predicted")


# ---- starting points -------------------------------------------------------------------------------------------------
def parse_key(text: str) -> dict[str, str]:
    """'a=1,b=x' -> {'a': '1', 'b': 'x'}."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, eq, value = part.partition("=")
        if not eq:
            raise BadInput(f"lineage: --key {text!r}: {part!r} is not column=value")
        out[name.strip()] = value.strip()
    return out


def _adding_commit(path: str, file_path: str) -> tuple[int, dict[str, Any]] | None:
    """The gold commit that added the data file `file_path` (Spark's _metadata.file_path): (version, commitInfo
    metadata), None when the log no longer holds it."""
    fs, root = files.filesystem(path)
    name = posixpath.basename(unquote(file_path))
    for log in sorted(fs.glob(f"{root.rstrip('/')}/_delta_log/*.json"), reverse=True):
        actions = [json.loads(line) for line in fs.cat_file(log).decode().splitlines() if line.strip()]
        if any("add" in a and posixpath.basename(unquote(a["add"]["path"])) == name for a in actions):
            info = next((a["commitInfo"] for a in actions if "commitInfo" in a), {})
            raw = info.get("userMetadata")
            meta = json.loads(raw) if raw else {}
            return int(posixpath.basename(log).split(".")[0]), meta if isinstance(meta, dict) else {}
    return None


def _date_column(cfg: Config, gold: DataFrame) -> str | None:
    """The gold table's date column (the flow's date_name), None for flows whose rows have no date."""
    name = getattr(cfg.flow, "date_name", None)
    return name if name and name in gold.columns else None


def prediction_node(walker: Walker, key: dict[str, str], day: date | None) -> str:
    """The gold row with natural `key` (and `day`): its node, with the commit (score run) that wrote it."""
    cfg, store = walker.cfg, walker.store
    path = cfg.catalog.path("predictions")
    if not store.exists(path):
        raise BadInput(f"lineage: no predictions table at {path}: run score first")
    gold = store.read(path)
    flow_key = [cfg.flow.key] if isinstance(cfg.flow.key, str) else list(cfg.flow.key)
    missing = sorted(set(flow_key) - set(key))
    unknown = sorted(set(key) - set(gold.columns))
    if missing or unknown or not key:
        raise BadInput(f"lineage: --key must give the gold key {flow_key}; missing {missing}, unknown {unknown}")
    cond = F.lit(True)
    for c, v in key.items():
        cond &= F.col(c).cast("string") == v
    date_col = _date_column(cfg, gold)
    if day is not None and date_col:
        cond &= F.col(date_col) == F.lit(day)
    try:  # the data file the row is in leads to the commit (score run) that wrote it
        rows = gold.filter(cond).select("*", F.col("_metadata.file_path").alias("_file")).limit(2).collect()
    except AnalysisException:  # a reader without Spark's file metadata: the row's own columns still hold
        rows = gold.filter(cond).withColumn("_file", F.lit(None).cast("string")).limit(2).collect()
    asked = ", ".join(f"{k}={v}" for k, v in key.items()) + (f", {date_col}={day}" if day else "")
    if not rows:
        raise BadInput(f"lineage: no gold prediction row with {asked} in {path}")
    if len(rows) > 1:
        raise BadInput(f"lineage: {asked} matches more than one gold row: give the whole key and the date")
    row = rows[0].asDict()
    version = store.version(path)
    file_path = row.pop("_file")
    commit = _adding_commit(path, file_path) if file_path else None
    attrs = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}
    attrs |= {"table": "predictions", "path": path, "gold_version": version, "key": key}
    if commit is None:
        attrs["missing"] = "no commit still in the Delta log names the row's data file: the score run is unknown"
    else:
        attrs |= {"written_in_version": commit[0], "score_run_id": commit[1].get("run_id"),
                  "commit_git_commit": commit[1].get("git_commit")}
    label = f"prediction {asked}"
    return walker.graph.add(Node(f"prediction:{asked}", "prediction", label, attrs)).id


def lineage(cfg: Config, store: DeltaStore, *, key: dict[str, str] | None = None, day: date | None = None,
            model: str | None = None, version: str | None = None, alias: str | None = None,
            table: str | None = None, table_version: int | None = None, file: str | None = None) -> LineageGraph:
    """The lineage graph around one starting point: a gold row (`key`, `day`), a model version (`model` with
    `version` or `alias`), a table version (`table`, `table_version`) or a landing file (`file`, name or URI).
    Walks down to the inputs and up to the consumers; BadInput (exit 2) for anything unknown."""
    chosen = [key is not None, bool(version or alias), table is not None, file is not None]
    if sum(chosen) != 1:
        raise BadInput("lineage: give exactly one of --key (with --date), --model-version/--alias, --table "
                       "(with --table-version) or --file")
    walker = Walker(cfg, store, "")
    if key is not None:
        start = prediction_node(walker, key, day)
    elif version or alias:
        start = walker.model_node(walker._model_version(model or cfg.mlflow.registered_model, version, alias))
    elif table is not None:
        if table not in cfg.catalog:
            raise BadInput(f"lineage: unknown table {table!r}; tables are {cfg.catalog.names()}")
        if table_version is None:
            raise BadInput("lineage: --table needs --table-version")
        start = walker.table_node(table, table_version)
    else:
        assert file is not None
        matches = sorted((f for fs in walker._ingest_log().values() for f in fs
                          if file in (f["file"], posixpath.basename(f["file"]))),
                         key=lambda f: f["status"] != "ingested")
        if not matches:
            raise BadInput(f"lineage: no landing file {file!r} in the ingest log")
        start = walker.file_node(matches[0])
    walker.graph.start = start
    walker.down(start)
    walker.up(start)
    return walker.graph
