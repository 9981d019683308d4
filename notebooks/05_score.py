# Databricks notebook source
# MAGIC %md
# MAGIC # 05 Score
# MAGIC Batch scoring of a date range with the registered champion through an MLflow Spark UDF into the gold
# MAGIC predictions table (the `score` job's function).

# COMMAND ----------

from pipelines.core.notebook import get_dbutils, open_notebook

dbutils = get_dbutils()
dbutils.widgets.text("dates", "2013-12-01:2013-12-07")
dbutils.widgets.text("alias", "champion")
nb = open_notebook(dbutils, [])
cfg, spark, store, flow = nb.cfg, nb.spark, nb.store, nb.flow

# COMMAND ----------

from jobs.common import parse_dates
from pipelines.stages.score.batch import run_score

out = run_score(spark, cfg, store, flow, parse_dates(dbutils.widgets.get("dates")), alias=dbutils.widgets.get("alias"))
out

# COMMAND ----------

gold = store.read(cfg.catalog.path("predictions"))
date = cfg.flow.date_name
gold.groupBy(date).agg({"probability": "avg", "prediction": "sum", "*": "count"}).orderBy(date).show()

# COMMAND ----------

# MAGIC %md
# MAGIC Lineage of one prediction (the `lineage` job's function): its model version and training run, the feature
# MAGIC table version and preprocessing, the bronze versions, ingest runs and landing files (size, sha256) and the
# MAGIC git commit of every job.

# COMMAND ----------

from pipelines.stages.lineage.graph import lineage
from pipelines.stages.lineage.render import to_text

row = gold.orderBy(date, *cfg.flow.key).first()
print(to_text(lineage(cfg, store, key={k: str(row[k]) for k in cfg.flow.key}, day=row[date])))
