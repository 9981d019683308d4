"""Bring your own data: a tabular data set (CSV files in landing/<source>/, a profile in conf/pipelines/<name>/)
runs the whole chain with no code change. The example is ggplot2's diamonds (conf/pipelines/diamonds).

Fast tests: the profile and its variants load (no Spark); land-demo lands the CSVs once. The slow test runs
run-all through spark-submit.sh and checks every layer independently of the jobs (delta-rs, the CSV files,
MLflow's own client)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pipelines.core.config import (
    REPO_ROOT,
    CategoryLabel,
    ConfigError,
    HashSplit,
    RegressionLabel,
    ThresholdLabel,
    load_config,
)
from pipelines.stages.land_demo import demo_datasets, land_demo

PROFILE = ["pipeline=diamonds"]
DIAMONDS = 53_940
COLORS = ["D", "E", "F", "G", "H", "I", "J"]
INPUTS_WITHOUT_PRICE = ("flow.groups=[{kind: numeric, name: numeric, columns: [carat, depth, table, x, y, z]}, "
                        "{kind: categorical, name: categorical, columns: [color, clarity, cut]}]")


def _inputs(cfg) -> list[str]:  # noqa: ANN001 - Config
    return [c for g in cfg.flow.groups for c in g.columns]


def _data_lines(folder: Path) -> int:
    """Rows in the CSV files of a landing folder, counted from the files themselves (header line excluded)."""
    return sum(len(f.read_text().splitlines()) - 1 for f in folder.glob("*.csv"))


# ---- the profile ------------------------------------------------------------------------------------------------
@pytest.mark.fast
def test_profile_loads_with_only_its_own_source_and_a_plain_flow() -> None:
    cfg = load_config("local", PROFILE)
    assert cfg.pipeline == "diamonds" and demo_datasets(cfg) == ["diamonds"]  # from its source
    assert list(cfg.ingest.sources) == ["diamonds"]  # nothing of flights (or any other profile) inherited
    src = cfg.ingest.sources["diamonds"]
    assert (src.format, src.path, src.table, src.partition_by) == ("csv", "diamonds/*.csv", "diamonds", [])
    assert list(src.columns) == ["diamond_id", "carat", "cut", "color", "clarity", "depth", "table", "price",
                                 "x", "y", "z"]  # the header of the landed files, in order
    assert src.columns["diamond_id"] == "int" and src.columns["cut"] == "string" and src.columns["price"] == "int"

    flow = cfg.flow
    assert flow.kind == "tabular" and flow.key == ["diamond_id"]
    assert flow.joins == [] and flow.derived == {} and flow.unknown_at_prediction == [] and flow.passthrough == []
    assert flow.date_columns == [] and not flow.has_date  # no date: the whole table is scored
    assert isinstance(flow.split, HashSplit) and flow.split_key == ["diamond_id"]
    assert flow.label == CategoryLabel(column="cut", positive=["Ideal", "Premium"])
    assert {g.kind: g.columns for g in flow.groups} == {
        "numeric": ["carat", "depth", "table", "x", "y", "z", "price"], "categorical": ["color", "clarity"]}
    assert "cut" not in _inputs(cfg)
    assert set(_inputs(cfg)) | {flow.label.column, *flow.key} == set(src.columns)  # every column has a role

    assert cfg.features.source_table == "diamonds" and cfg.mlflow.registered_model == "diamond-cut"
    catalog = cfg.catalog
    assert catalog.get("diamonds").layer == "bronze"
    assert catalog.get("features").table == "diamond_features"
    predictions = catalog.get("predictions")
    assert (predictions.layer, predictions.table, predictions.partition_by) == ("gold", "diamond_predictions", ())
    assert catalog.get("drift").table == "diamond_drift"


@pytest.mark.fast
def test_label_variants_by_set() -> None:
    """The same data as a threshold label or a regression on price: price leaves the inputs (and cut, no longer
    the label, may join them); the union member is replaced, nothing of the category label is kept."""
    threshold = load_config("local", [*PROFILE, "flow.label={kind: threshold, column: price, threshold: 5000}",
                                      INPUTS_WITHOUT_PRICE])
    assert threshold.flow.label == ThresholdLabel(column="price", threshold=5000.0)
    regression = load_config("local", [*PROFILE, "flow.label={kind: regression, column: price}",
                                       INPUTS_WITHOUT_PRICE])
    assert regression.flow.label == RegressionLabel(column="price")
    for cfg in (threshold, regression):
        assert "price" not in _inputs(cfg) and "cut" in _inputs(cfg)
        assert cfg.flow.split == load_config("local", PROFILE).flow.split  # the rest of the profile unchanged
    category = load_config("local", [*PROFILE, "flow.label.positive=[Ideal]"])  # same kind: merged as usual
    assert category.flow.label == CategoryLabel(column="cut", positive=["Ideal"])


@pytest.mark.fast
def test_price_label_with_price_among_inputs_is_refused() -> None:
    for label in ("{kind: threshold, column: price, threshold: 5000}", "{kind: regression, column: price}"):
        with pytest.raises(ConfigError) as e:
            load_config("local", [*PROFILE, f"flow.label={label}"])
        msg = str(e.value)
        assert "flow.groups:" in msg and "['price']" in msg and "conf/pipelines/diamonds/flow.yaml" in msg


@pytest.mark.fast
def test_profile_whose_label_column_is_an_input_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "conf"
    for layer in ("base", "local", "pipelines/diamonds"):
        shutil.copytree(REPO_ROOT / "conf" / layer, root / layer)
    flow_yaml = root / "pipelines" / "diamonds" / "flow.yaml"
    data = yaml.safe_load(flow_yaml.read_text())
    data["flow"]["groups"][1]["columns"].append("cut")  # the label column as a categorical input
    flow_yaml.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as e:
        load_config("local", PROFILE, root)
    msg = str(e.value)
    assert "flow.groups:" in msg and "not known at prediction time: ['cut']" in msg
    assert "conf/pipelines/diamonds/flow.yaml" in msg  # the file to fix

    with pytest.raises(ConfigError, match=r"flow.groups: .*\['color'\]"):  # a label on an input column, by --set
        load_config("local", [*PROFILE, "flow.label={kind: category, column: color, positive: [D, E, F]}"])


# ---- landing ----------------------------------------------------------------------------------------------------
@pytest.mark.fast
def test_land_diamonds_once(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    summary = land_demo(str(landing), fraction=0.05, seed=7, datasets=["diamonds"])
    folder = landing / "diamonds"
    assert sorted(p.name for p in landing.iterdir()) == ["diamonds"]  # only what was asked for
    assert sorted(p.name for p in folder.iterdir()) == [f"diamonds_{c}.csv" for c in COLORS]
    sampled = round(DIAMONDS * 0.05)
    assert _data_lines(folder) == sampled == summary["diamonds"]["rows"]
    assert summary["diamonds"] == {"rows": sampled, "files": 7, "files_written": 7}
    ids, colors = [], set()
    for f in sorted(folder.glob("*.csv")):
        header, *rows = f.read_text().splitlines()
        assert header == "diamond_id,carat,cut,color,clarity,depth,table,price,x,y,z"
        ids += [int(r.split(",", 1)[0]) for r in rows]
        colors |= {(f.stem[-1], r.split(",")[3]) for r in rows}
    assert len(ids) == len(set(ids)) and all(1 <= i <= DIAMONDS for i in ids)  # stable, unique ids
    assert all(file_color == color for file_color, color in colors)  # one colour per export file

    mtimes = {f: f.stat().st_mtime_ns for f in folder.iterdir()}
    again = land_demo(str(landing), fraction=0.05, seed=7, datasets=["diamonds"])
    assert again["diamonds"]["files_written"] == 0
    assert {f: f.stat().st_mtime_ns for f in folder.iterdir()} == mtimes  # nothing rewritten


# ---- the whole chain --------------------------------------------------------------------------------------------
CHAIN = [*PROFILE, "ingest.settle_s=0", "demo.fraction=0.1", "features.stats.enabled=false", "training.epochs=2",
         "training.max_steps_per_epoch=10", "training.optimizer.warmup_epochs=1", "training.baseline.enabled=true",
         "training.timeout_s=600"]


@pytest.mark.slow
def test_run_all_on_own_data(tmp_path: Path) -> None:
    """run-all on diamonds through spark-submit.sh: the CSVs land, bronze holds every landed row, silver splits
    them, gold scores every diamond, and the model is registered."""
    from mlflow import MlflowClient

    from pipelines.core.delta import to_pandas

    ws = tmp_path / "ws"
    res = subprocess.run([str(REPO_ROOT / "spark-submit.sh"), "run-all", *[f"--set={s}" for s in CHAIN]],
                         cwd=REPO_ROOT, env={**os.environ, "PIPELINE_HOME": str(ws)}, capture_output=True,
                         text=True, timeout=1500)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    cfg = load_config("local", [f"storage.workspace={ws}", *CHAIN])
    catalog = cfg.catalog

    landed = _data_lines(Path(catalog.landing) / "diamonds")
    assert landed == round(DIAMONDS * 0.1)
    bronze = to_pandas(catalog.path("diamonds"))
    assert len(bronze) == landed and bronze["diamond_id"].is_unique

    silver = to_pandas(catalog.path("features"), columns=["diamond_id", "split", "label"])
    per_split = silver["split"].value_counts().to_dict()
    assert set(per_split) == {"train", "validation", "test"} and sum(per_split.values()) == len(bronze)
    assert all(abs(per_split[s] / len(bronze) - 0.15) < 0.03 for s in ("validation", "test"))
    truth = bronze.set_index("diamond_id")["cut"].isin(["Ideal", "Premium"]).astype(int)
    assert (silver.set_index("diamond_id")["label"].astype(int).sort_index() == truth.sort_index()).all()

    gold = to_pandas(catalog.path("predictions"))
    assert len(gold) == len(bronze) and gold["diamond_id"].is_unique
    assert set(gold["diamond_id"]) == set(bronze["diamond_id"])
    assert gold["probability"].between(0, 1).all() and set(gold["prediction"].astype(int)) <= {0, 1}
    assert set(gold["model_name"]) == {"diamond-cut"}

    assert (ws / "mlflow.db").is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{ws}/mlflow.db")  # the workspace's own store
    assert client.get_registered_model("diamond-cut").name == "diamond-cut"
    versions = {v.version for v in client.search_model_versions("name = 'diamond-cut'")}
    assert client.get_model_version_by_alias("diamond-cut", "champion").version in versions  # the first is champion
