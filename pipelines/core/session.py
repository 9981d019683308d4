"""The one SparkSession factory used by jobs, notebooks and tests.

Under spark-submit the master and resources come from the command line (spark-submit.sh builds them from conf);
started from Python (tests, notebooks) the factory applies the same conf itself. The Delta extension is enabled
when the Delta classes are on the classpath: DELTA_JARS names jar files to add, or --packages/--jars provided them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from pipelines.core.config import REPO_ROOT, Config

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
LOG4J = REPO_ROOT / "conf" / "log4j2.properties"


def _under_spark_submit() -> bool:
    return "SPARK_SUBMIT_OPTS" in os.environ or os.environ.get("PIPELINE_SUBMITTED") == "1"


def get_spark(cfg: Config, app_suffix: str = "") -> SparkSession:
    """Return the active session or build one from `cfg` (master, conf, Delta when available)."""
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if cfg.spark.master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # servers the project starts bind to loopback
    builder = SparkSession.builder.appName(cfg.spark.app_name + (f"-{app_suffix}" if app_suffix else ""))
    if os.environ.get("PIPELINE_SUBMITTED") != "1":
        builder = builder.master(cfg.spark.master).config("spark.driver.memory", cfg.spark.driver_memory)
        if LOG4J.exists():
            opt = f"-Dlog4j2.configurationFile=file:{LOG4J}"
            builder = builder.config("spark.driver.extraJavaOptions", opt)
            builder = builder.config("spark.executor.extraJavaOptions", opt)
    for key, value in cfg.spark.conf.items():
        builder = builder.config(key, value)
    jars = [j for j in os.environ.get("DELTA_JARS", "").split(",") if j] + cfg.spark.jars
    if jars:
        missing = [j for j in jars if "://" not in j and not Path(j).exists()]
        if missing:
            raise FileNotFoundError(f"DELTA_JARS / spark.jars name files that do not exist: {missing}")
        builder = builder.config("spark.jars", ",".join(jars))
    if jars or cfg.spark.packages or cfg.storage.engine == "delta-spark":
        builder = builder.config("spark.sql.extensions", DELTA_EXTENSION).config(
            "spark.sql.catalog.spark_catalog", DELTA_CATALOG
        )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.spark.log_level)
    return spark


def has_delta_classes(spark: SparkSession) -> bool:
    """True when the session's JVM can load Delta Lake's Spark classes (delta-spark engine usable)."""
    try:
        spark._jvm.java.lang.Class.forName(  # type: ignore[union-attr]
            DELTA_EXTENSION, False, spark._jvm.Thread.currentThread().getContextClassLoader()  # type: ignore
        )
        return True
    except Exception:
        return False
