# Databricks notebook source
# MAGIC %md
# MAGIC # 03 Exploration
# MAGIC Descriptive statistics of the training split as the features run computed them (Summarizer metrics,
# MAGIC null fractions, skewness, kurtosis, correlations, chi-square tests, label balance) and its plots, plus a
# MAGIC look at the bronze data: delay rate by month and carrier.

# COMMAND ----------

import json

from pipelines.core.notebook import get_dbutils, open_notebook

dbutils = get_dbutils()
dbutils.widgets.text("top", "5")
nb = open_notebook(dbutils, [])
cfg, spark, store, flow = nb.cfg, nb.spark, nb.store, nb.flow

# COMMAND ----------

import mlflow

from pipelines.core.recorder import latest_features_record

run = latest_features_record(cfg)
report = mlflow.artifacts.load_dict(f"runs:/{run.run_id}/stats_report.json")
print(json.dumps({k: report[k] for k in ("rows", "label_balance") if k in report}, indent=2))
{name: {k: round(v, 3) for k, v in stats.items() if isinstance(v, float)} for name, stats in report["numeric"].items()}

# COMMAND ----------

from IPython.display import Image, display

plots = mlflow.artifacts.download_artifacts(f"runs:/{run.run_id}/plots")
for name in ("label_balance.png", "histograms.png", "correlation.png"):
    display(Image(filename=f"{plots}/{name}"))

# COMMAND ----------

from pyspark.sql import functions as F

flights = store.read(cfg.catalog.path(cfg.features.source_table))
(flights.groupBy("month")
 .agg(F.count("*").alias("flights"), F.avg((F.col("arr_delay") > 15).cast("double")).alias("late_rate"))
 .orderBy("month").show(12))
flights.groupBy("carrier").agg(F.avg("arr_delay").alias("mean_arr_delay")).orderBy(F.desc("mean_arr_delay")).show(
    int(dbutils.widgets.get("top")))
