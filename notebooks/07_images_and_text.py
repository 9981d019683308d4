# Databricks notebook source
# MAGIC %md
# MAGIC # 07 Images and text
# MAGIC The image (digits) and text (tweets) flows, chosen by the `pipeline` widget exactly as
# MAGIC `./spark-submit.sh run-all --set pipeline=<name>` chooses them: land and ingest the profile's data, build the
# MAGIC feature table, train with the barrier launcher against the MLlib baseline, and score into gold. The `framework`
# MAGIC widget picks the network's framework (`training.framework`): PyTorch DistributedDataParallel by default here,
# MAGIC Keras with Horovod as in 04_train; the model registers and scores the same way.

# COMMAND ----------

from pipelines.core.notebook import get_dbutils, open_notebook

dbutils = get_dbutils()
dbutils.widgets.dropdown("pipeline", "digits", ["digits", "tweets"])
dbutils.widgets.text("fraction", "1.0")
dbutils.widgets.text("epochs", "60")
dbutils.widgets.dropdown("framework", "pytorch", ["pytorch", "tensorflow"])
nb = open_notebook(dbutils, [f"demo.fraction={dbutils.widgets.get('fraction')}",
                             f"training.epochs={dbutils.widgets.get('epochs')}",
                             f"training.framework={dbutils.widgets.get('framework')}"])
cfg, spark, store, flow = nb.cfg, nb.spark, nb.store, nb.flow

# COMMAND ----------

from pipelines.stages.ingest.run import run_ingest
from pipelines.stages.land_demo import demo_datasets, land_demo

land_demo(cfg.catalog.landing, cfg.demo.fraction, cfg.demo.seed, demo_datasets(cfg))
{r.source: {"ok": r.rows_ok, "quarantined": r.rows_quarantined} for r in run_ingest(spark, cfg, store)}

# COMMAND ----------

from pipelines.stages.features import run_features

features = run_features(spark, cfg, store, flow)
table = store.read(features.run.table_path, features.run.table_version)
table.groupBy("split", "label_name").count().orderBy("split", "label_name").toPandas()

# COMMAND ----------

import matplotlib.pyplot as plt
import mlflow

for art in mlflow.artifacts.list_artifacts(run_id=features.run.run_id, artifact_path="plots"):  # the flow's plots
    png = mlflow.artifacts.download_artifacts(run_id=features.run.run_id, artifact_path=art.path)
    plt.figure(figsize=(6, 6))
    plt.imshow(plt.imread(png))
    plt.axis("off")
    plt.show()

# COMMAND ----------

from pipelines.stages.score.batch import run_score
from pipelines.stages.train import run_train

result = run_train(spark, cfg, store, flow, features_run_id=features.run.run_id)
print(f"{result.registered_model} v{result.version} -> {result.alias}")
{f"{cfg.training.framework}_test_accuracy": result.test["accuracy"], "mllib_baseline_test_accuracy": (result.baseline_test or {}).get("accuracy")}

# COMMAND ----------

scored = run_score(spark, cfg, store, flow)
store.read(cfg.catalog.path("predictions")).filter("split = 'test'").groupBy("true_label", "predicted_label") \
    .count().orderBy("true_label", "predicted_label").toPandas().head(20)
