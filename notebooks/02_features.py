# Databricks notebook source
# MAGIC %md
# MAGIC # 02 Features
# MAGIC Bronze tables -> the silver feature table and the fitted preprocessing PipelineModel, logged to MLflow
# MAGIC (the `features` job's function).

# COMMAND ----------

from pipelines.core.config import load_config
from pipelines.core.delta import DeltaStore
from pipelines.core.notebook import get_dbutils
from pipelines.core.session import get_spark

dbutils = get_dbutils()
dbutils.widgets.text("env", "local")
dbutils.widgets.text("stats", "true")
cfg = load_config(dbutils.widgets.get("env"), [f"features.stats.enabled={dbutils.widgets.get('stats')}"])
spark = get_spark(cfg, "notebook")
store = DeltaStore(spark, cfg.storage.engine)

# COMMAND ----------

from pipelines.features import run_features

result = run_features(spark, cfg, store)
print(f"table version {result.run.table_version}, vector size {result.run.vector_size}, run {result.run.run_id}")
result.splits

# COMMAND ----------

from pipelines.features import read_feature_table

read_feature_table(store, result.run).groupBy("split").count().show()
