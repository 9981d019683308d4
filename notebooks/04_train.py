# Databricks notebook source
# MAGIC %md
# MAGIC # 04 Train
# MAGIC Barrier-mode Horovod training on the latest feature table, evaluation against the MLlib baseline, and
# MAGIC registration with the champion/challenger aliases (the `train` job's function).

# COMMAND ----------

from pipelines.core.notebook import get_dbutils, open_notebook

dbutils = get_dbutils()
dbutils.widgets.text("epochs", "12")
dbutils.widgets.text("num_workers", "2")
nb = open_notebook(dbutils, [f"training.epochs={dbutils.widgets.get('epochs')}", f"training.num_workers={dbutils.widgets.get('num_workers')}"])
cfg, spark, store, flow = nb.cfg, nb.spark, nb.store, nb.flow

# COMMAND ----------

from pipelines.stages.train import run_train

result = run_train(spark, cfg, store, flow)
print(f"{result.registered_model} v{result.version} -> {result.alias}; threshold {result.threshold:.3f}")
{"test": result.test, "baseline_test": result.baseline_test}

# COMMAND ----------

import pandas as pd

pd.DataFrame(result.history)
