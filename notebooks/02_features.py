# Databricks notebook source
# MAGIC %md
# MAGIC # 02 Features
# MAGIC Bronze tables -> the silver feature table and the fitted preprocessing PipelineModel, logged to MLflow
# MAGIC (the `features` job's function).

# COMMAND ----------

from pipelines.core.notebook import get_dbutils, open_notebook

dbutils = get_dbutils()
dbutils.widgets.text("stats", "true")
nb = open_notebook(dbutils, [f"features.stats.enabled={dbutils.widgets.get('stats')}"])
cfg, spark, store, flow = nb.cfg, nb.spark, nb.store, nb.flow

# COMMAND ----------

from pipelines.stages.features import run_features

result = run_features(spark, cfg, store, flow)
print(f"table version {result.run.table_version}, vector size {result.run.vector_size}, run {result.run.run_id}")
result.splits

# COMMAND ----------

store.read(result.run.table_path, result.run.table_version).groupBy("split").count().show()
