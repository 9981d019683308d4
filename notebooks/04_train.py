# Databricks notebook source
# MAGIC %md
# MAGIC # 04 Train
# MAGIC Barrier-mode Horovod training on the latest feature table, evaluation against the MLlib baseline, and
# MAGIC registration with the champion/challenger aliases (the `train` job's function).

# COMMAND ----------

from pipelines.core.config import load_config
from pipelines.core.delta import DeltaStore
from pipelines.core.notebook import get_dbutils
from pipelines.core.session import get_spark

dbutils = get_dbutils()
dbutils.widgets.text("env", "local")
dbutils.widgets.text("epochs", "12")
dbutils.widgets.text("num_workers", "2")
cfg = load_config(dbutils.widgets.get("env"), [f"training.epochs={dbutils.widgets.get('epochs')}",
                                               f"training.num_workers={dbutils.widgets.get('num_workers')}"])
spark = get_spark(cfg, "notebook")
store = DeltaStore(spark, cfg.storage.engine)

# COMMAND ----------

from pipelines.flows.base import get_flow
from pipelines.training.trainer import run_train

result = run_train(spark, cfg, store, get_flow(cfg))
print(f"{result.registered_model} v{result.version} -> {result.alias}; threshold {result.threshold:.3f}")
{"test": result.test, "baseline_test": result.baseline_test}

# COMMAND ----------

import pandas as pd

pd.DataFrame(result.history)
