# Databricks notebook source
# MAGIC %md
# MAGIC # 05 Score
# MAGIC Batch scoring of a date range with the registered champion through an MLflow Spark UDF into the gold
# MAGIC predictions table (the `score` job's function).

# COMMAND ----------

from pipelines.core.config import load_config
from pipelines.core.delta import DeltaStore
from pipelines.core.notebook import get_dbutils
from pipelines.core.session import get_spark

dbutils = get_dbutils()
dbutils.widgets.text("env", "local")
dbutils.widgets.text("dates", "2013-12-01:2013-12-07")
dbutils.widgets.text("alias", "champion")
cfg = load_config(dbutils.widgets.get("env"))
spark = get_spark(cfg, "notebook")
store = DeltaStore(spark, cfg.storage.engine)

# COMMAND ----------

from jobs.common import parse_dates
from pipelines.scoring import run_score

out = run_score(spark, cfg, store, parse_dates(dbutils.widgets.get("dates")), alias=dbutils.widgets.get("alias"))
out

# COMMAND ----------

gold = store.read(cfg.catalog.path("predictions"))
gold.groupBy("flight_date").agg({"probability": "avg", "prediction": "sum", "*": "count"}).orderBy("flight_date").show()
