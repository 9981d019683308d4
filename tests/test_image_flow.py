"""Image flow features: counts of prepare_images on inline rows; the digits end to end (land, ingest, features)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from features.image import decode_image
from pipelines.core.config import Config
from pipelines.core.delta import DeltaStore
from pipelines.core.recorder import latest_features_record
from pipelines.flows import get_flow
from pipelines.flows.base import FEATURES, LABEL
from pipelines.flows.image.config import ImageFlowConf
from pipelines.flows.image.nodes import label_conf, prepare_images, with_original_size
from pipelines.flows.labels import LABEL_NAME, class_names, sort_classes
from pipelines.stages.features import run_features
from pipelines.stages.ingest.run import ingest
from pipelines.stages.land_demo import land_digits


def _png(value: int, size: tuple[int, int] = (3, 2)) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size, value).save(buf, format="PNG")
    return buf.getvalue()


def test_sort_classes_numeric_when_all_digits() -> None:
    assert sort_classes(["10", "9", "0", None, "1", "9"]) == ["0", "1", "9", "10"]
    assert sort_classes(["b", "10", "a", "9"]) == ["10", "9", "a", "b"]


def test_prepare_images_counts(spark: SparkSession) -> None:
    rows = [
        ("a.png", _png(10), "0"), ("b.png", _png(20), "1"), ("c.png", _png(30), "10"), ("d.png", _png(40), "10"),
        ("a.png", _png(50), "0"),  # same key delivered twice: one is removed
        ("e.png", _png(60), None),  # no label: excluded and counted
    ]
    images = spark.createDataFrame(rows, "path string, content binary, label string")
    conf = ImageFlowConf()
    classes = class_names(images, label_conf(conf))
    assert classes == ["0", "1", "10"]
    prepared, counts = prepare_images(images, conf, classes)
    assert counts == {"rows_in": 6, "duplicates_removed": 1, "excluded_unlabeled": 1, "rows_out": 4}
    got = {r["path"]: r for r in prepared.collect()}
    assert sorted(got) == ["a.png", "b.png", "c.png", "d.png"]
    assert {p: (r[LABEL_NAME], r[LABEL]) for p, r in got.items()} == {
        "a.png": ("0", 0), "b.png": ("1", 1), "c.png": ("10", 2), "d.png": ("10", 2)}
    assert all(r["split"] in ("train", "validation", "test") for r in got.values())
    again, _ = prepare_images(images.orderBy(F.desc("content")), conf, classes)
    assert {r["path"]: (r["content"], r["split"]) for r in again.collect()} == {
        p: (r["content"], r["split"]) for p, r in got.items()}  # the same duplicate is kept, in any order
    sized = {r["path"]: (r["width"], r["height"], r["size"]) for r in with_original_size(prepared, "content").collect()}
    assert sized["b.png"] == (3, 2, len(_png(20)))


def _known_file(cfg: Config) -> Path:
    return Path(cfg.catalog.landing) / "digits" / "3" / "digit_0003.png"


def test_digits_end_to_end(spark: SparkSession, make_cfg: Callable[..., Config], store: DeltaStore) -> None:
    cfg = make_cfg("pipeline=digits")
    land_digits(cfg.catalog.landing)
    ingest(spark, cfg, store, "t", ["digits"])
    result = run_features(spark, cfg, store, get_flow(cfg))
    run = result.run

    assert run.classes == [str(d) for d in range(10)]
    assert run.vector_size == 64 and run.input_shape == [8, 8, 1]
    assert result.counts == {"rows_in": 1797, "duplicates_removed": 0, "excluded_unlabeled": 0,
                             "excluded_undecodable": 0, "rows_out": 1797}
    table = store.read(run.table_path, run.table_version)
    assert table.columns == ["path", LABEL_NAME, LABEL, "split", FEATURES, "size"]
    assert table.count() == 1797
    per_split = {s: d["rows"] for s, d in result.splits.items()}
    assert sum(per_split.values()) == 1797 and all(per_split.values())
    assert per_split["train"] / 1797 == pytest.approx(0.70, abs=0.05)
    assert per_split["validation"] / 1797 == pytest.approx(0.15, abs=0.04)
    assert per_split["test"] / 1797 == pytest.approx(0.15, abs=0.04)
    bounds = table.agg(F.min(F.array_min(FEATURES)), F.max(F.array_max(FEATURES)),
                       F.min(F.size(FEATURES)), F.countDistinct(LABEL)).first()
    assert bounds[0] >= 0.0 and bounds[1] <= 1.0 and bounds[1] > 0.9 and bounds[2] == 64 and bounds[3] == 10
    assert table.filter(F.col(LABEL_NAME) != F.col(LABEL).cast("string")).count() == 0

    known = _known_file(cfg)
    row = table.filter(F.col("path").endswith("/digits/3/digit_0003.png")).first()
    assert row[LABEL] == 3 and row["size"] == known.stat().st_size
    expected = decode_image(known.read_bytes(), 8, 8).ravel()
    assert np.array_equal(np.asarray(row[FEATURES], dtype=np.float32), expected)

    client = mlflow.MlflowClient()
    plots = {a.path for a in client.list_artifacts(run.run_id, "plots")}
    assert {"plots/sample_grid.png", "plots/class_counts.png", "plots/mean_image_per_class.png"} <= plots
    stats = mlflow.artifacts.load_dict(f"runs:/{run.run_id}/image_stats.json")
    assert sum(c["rows"] for c in stats["per_class"].values()) == 1797
    assert {c: d["original_sizes"] for c, d in stats["per_class"].items()} == {
        c: {"8x8": d["rows"]} for c, d in stats["per_class"].items()}
    assert all(len(v) == cfg.flow.grid_per_class for v in stats["sample_grid"].values())
    assert stats["sample_grid"]["3"][0].endswith("/3/digit_0003.png")  # the smallest path of class 3
    assert latest_features_record(cfg).run_id == run.run_id

    again = run_features(spark, cfg, store, get_flow(cfg))  # same bronze: a new version with the same rows and splits
    assert again.run.table_version == run.table_version + 1 and again.run.run_id != run.run_id
    second = store.read(again.run.table_path, again.run.table_version)
    assert second.exceptAll(table).count() == 0 and table.exceptAll(second).count() == 0
    assert again.splits == result.splits
    assert latest_features_record(cfg).run_id == again.run.run_id
