# Databricks notebook source
# MAGIC %md
# MAGIC # 06 Monitor
# MAGIC Drift of the scored window against the training data (PSI, KS per input, prediction shift) and the
# MAGIC realized metric where labels have arrived (the `monitor` job's function).

# COMMAND ----------

from pipelines.core.config import load_config
from pipelines.core.delta import DeltaStore
from pipelines.core.errors import DriftAlert
from pipelines.core.notebook import get_dbutils
from pipelines.core.session import get_spark

dbutils = get_dbutils()
dbutils.widgets.text("env", "local")
dbutils.widgets.text("dates", "2013-12-01:2013-12-07")
cfg = load_config(dbutils.widgets.get("env"))
spark = get_spark(cfg, "notebook")
store = DeltaStore(spark, cfg.storage.engine)

# COMMAND ----------

from jobs.common import parse_dates
from pipelines.monitoring import run_monitor

try:
    report = run_monitor(spark, cfg, store, parse_dates(dbutils.widgets.get("dates")))
    print("no drift alert")
except DriftAlert as alert:
    print(f"DRIFT ALERT: {alert}")

# COMMAND ----------

drift = store.read(cfg.catalog.path("drift"))
drift.orderBy("window", "psi", ascending=False).select("window", "feature", "psi", "ks", "alert").show(30)
