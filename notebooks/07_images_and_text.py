# Databricks notebook source
# MAGIC %md
# MAGIC # 07 Images and text
# MAGIC The image (digits) and text (tweets) flows, chosen by the `pipeline` widget exactly as
# MAGIC `./spark-submit.sh run-all --set pipeline=<name>` chooses them: land and ingest the profile's data, build the
# MAGIC feature table, train with the barrier Horovod launcher against the MLlib baseline, and score into gold.

# COMMAND ----------

from pipelines.core.config import load_config
from pipelines.core.delta import DeltaStore
from pipelines.core.notebook import get_dbutils
from pipelines.core.session import get_spark

dbutils = get_dbutils()
dbutils.widgets.text("env", "local")
dbutils.widgets.dropdown("pipeline", "digits", ["digits", "tweets"])
dbutils.widgets.text("fraction", "1.0")
dbutils.widgets.text("epochs", "60")
cfg = load_config(dbutils.widgets.get("env"), [f"pipeline={dbutils.widgets.get('pipeline')}",
                                               f"demo.fraction={dbutils.widgets.get('fraction')}",
                                               f"training.epochs={dbutils.widgets.get('epochs')}"])
spark = get_spark(cfg, "notebook")
store = DeltaStore(spark, cfg.storage.engine)
print(f"pipeline {cfg.pipeline}: flow {cfg.flow.kind}, table {cfg.features.output_table}, model {cfg.mlflow.registered_model}")

# COMMAND ----------

from pipelines.demo import land_demo
from pipelines.ingest import run_ingest

land_demo(cfg.catalog.landing, cfg.demo.fraction, cfg.demo.seed, cfg.demo.datasets)
{r.source: {"ok": r.rows_ok, "quarantined": r.rows_quarantined} for r in run_ingest(spark, cfg, store)}

# COMMAND ----------

from pipelines.flows.dispatch import run_features_for

features_run_id = run_features_for(spark, cfg, store)
table = store.read(cfg.catalog.path("features"))
table.groupBy("split", "label_name").count().orderBy("split", "label_name").toPandas()

# COMMAND ----------

import matplotlib.pyplot as plt
import mlflow

if cfg.flow.kind == "image":
    grid = mlflow.artifacts.download_artifacts(f"runs:/{features_run_id}/plots/sample_grid.png")
    plt.figure(figsize=(6, 6))
    plt.imshow(plt.imread(grid))
    plt.axis("off")
    plt.show()

# COMMAND ----------

from pipelines.flows.dispatch import run_score_for, run_train_for

result = run_train_for(spark, cfg, store, features_run_id=features_run_id)
print(f"{result.registered_model} v{result.version} -> {result.alias}")
{"keras_test_accuracy": result.test["accuracy"], "mllib_baseline_test_accuracy": (result.baseline_test or {}).get("accuracy")}

# COMMAND ----------

scored = run_score_for(spark, cfg, store)
store.read(cfg.catalog.path("predictions")).filter("split = 'test'").groupBy("true_label", "predicted_label") \
    .count().orderBy("true_label", "predicted_label").toPandas().head(20)
