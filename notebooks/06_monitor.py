# Databricks notebook source
# MAGIC %md
# MAGIC # 06 Monitor
# MAGIC Drift of the scored window against the training data (PSI, KS per input, prediction shift) and the
# MAGIC realized metric where labels have arrived (the `monitor` job's function).

# COMMAND ----------

from pipelines.core.errors import DriftAlert
from pipelines.core.notebook import get_dbutils, open_notebook

dbutils = get_dbutils()
dbutils.widgets.text("dates", "2013-12-01:2013-12-07")
nb = open_notebook(dbutils, [])
cfg, spark, store, flow = nb.cfg, nb.spark, nb.store, nb.flow

# COMMAND ----------

from jobs.common import parse_dates
from pipelines.stages.monitor.run import run_monitor

try:
    report = run_monitor(spark, cfg, store, flow, parse_dates(dbutils.widgets.get("dates")))
    print("no drift alert")
except DriftAlert as alert:
    print(f"DRIFT ALERT: {alert}")

# COMMAND ----------

drift = store.read(cfg.catalog.path("drift"))
drift.orderBy("window", "psi", ascending=False).select("window", "feature", "psi", "ks", "alert").show(30)
