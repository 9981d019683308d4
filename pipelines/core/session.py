"""The one SparkSession factory used by jobs, notebooks and tests.

Under spark-submit the master, resources and jars come from the command line (spark-submit.sh builds them from
conf); started from Python (tests, notebooks) the factory applies the same conf itself. Unless
`storage.engine=embedded`, it adds the Delta jars (the project's .jars/delta, fetched by ./bootstrap.sh, or the
files DELTA_JARS names) and the Delta extension and catalog, so the delta-spark engine is the default wherever
its jars are present.

Some settings follow from the config rather than being written in it (`derived_conf`): with the event log on,
its folder is <workspace>/spark-events (created before the session starts); Spark's console progress bar is on
only when stderr is a terminal; executors (Horovod ranks included) get TF's C++ log level; Spark's redaction masks
what the project treats as secret (logs.spark_redaction_conf). The config's own spark.conf wins over each of them.
The Spark UI address is logged when the session starts.

Started from Python, this process launches the JVM (spark-submit pyspark-shell): its settings go through a private
properties file, not its command line (pyspark would pass each one as --conf key=value), and on a local master it
binds loopback whatever SPARK_LOCAL_IP the environment exports (Spark's UI binds SPARK_LOCAL_IP, else 0.0.0.0).
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import MutableMapping
from pathlib import Path

from pyspark import SparkContext
from pyspark.sql import SparkSession

from pipelines.core import files
from pipelines.core.config import REPO_ROOT, Config
from pipelines.core.handoff import PROPERTIES, private_dir, write_properties
from pipelines.core.logs import LOG, TF_LOG_LEVEL, spark_redaction_conf

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
DELTA_CONF = {"spark.sql.extensions": DELTA_EXTENSION, "spark.sql.catalog.spark_catalog": DELTA_CATALOG}
LOG4J = REPO_ROOT / "conf" / "log4j2.properties"
NO_DELTA_JARS = (
    "storage.engine=delta-spark needs the Delta jars (delta-spark, delta-storage): none in {where} and DELTA_JARS "
    "is not set. Run ./bootstrap.sh (its mvn step fetches them from conf/jvm/pom.xml into .jars/delta), set "
    "DELTA_JARS=<jar>,<jar>, or use --set storage.engine=embedded."
)


def delta_jar_dir() -> Path:
    """Where ./bootstrap.sh puts the Delta jars: <repo>/.jars/delta (bootstrap's JARS_DIR moves .jars)."""
    return REPO_ROOT / os.environ.get("JARS_DIR", ".jars") / "delta"


def delta_jars() -> list[str]:
    """The Delta jar files to add: those DELTA_JARS names (files or folders of jars) when set, else the project's."""
    named = [j for j in os.environ.get("DELTA_JARS", "").split(",") if j]
    if not named:
        return sorted(str(p) for p in delta_jar_dir().glob("*.jar"))
    out: list[str] = []
    for j in named:
        out += sorted(str(p) for p in Path(j).glob("*.jar")) if Path(j).is_dir() else [j]
    return out


def local_cores(master: str) -> int | None:
    """The cores of a local master (local, local[N], local[*], local[N,F]); None for a cluster."""
    if not master.startswith("local"):
        return None
    inside = master.partition("[")[2].partition("]")[0].split(",")[0].strip()
    return (os.cpu_count() or 1) if inside == "*" else int(inside) if inside.isdigit() else 1


def delta_conf(cfg: Config) -> dict[str, str]:
    """The settings a Delta session gets: the extension and catalog, and on a local master Delta's snapshot
    reconstruction (its log replay, one Spark job per table read) in as many partitions as there are cores
    instead of Delta's 50, sized for clusters: on two cores those 50 tiny tasks cost ~1 s per table read.
    A key the config's spark.conf sets itself is left to it."""
    conf = dict(DELTA_CONF)
    cores = local_cores(cfg.spark.master)
    if cores:
        conf["spark.databricks.delta.snapshotPartitions"] = str(cores)
    return {k: v for k, v in conf.items() if k not in cfg.spark.conf}


def session_jars(cfg: Config) -> list[str]:
    """The jars a session started from Python gets: the Delta jars unless the engine is embedded, then spark.jars.

    storage.engine=delta-spark without jars (and without spark.packages) is an error naming the set-up step.
    """
    delta = delta_jars() if cfg.storage.engine != "embedded" else []
    if cfg.storage.engine == "delta-spark" and not delta and not cfg.spark.packages:
        raise FileNotFoundError(NO_DELTA_JARS.format(where=delta_jar_dir()))
    jars = delta + cfg.spark.jars
    missing = [j for j in jars if "://" not in j and not Path(j).exists()]
    if missing:
        raise FileNotFoundError(f"DELTA_JARS / spark.jars name files that do not exist: {missing}")
    return jars


def event_log_dir(cfg: Config) -> str:
    """Where Spark writes its event log: spark.eventLog.dir when set, else <workspace>/spark-events (a URI)."""
    return cfg.spark.conf.get("spark.eventLog.dir") or files.to_uri(files.join(cfg.workspace, "spark-events"))


def derived_conf(cfg: Config, console: bool) -> dict[str, str]:
    """Spark settings that follow from the config and the terminal (`console`: stderr is a TTY); a key the config's
    spark.conf sets itself is left to it."""
    derived = {"spark.ui.showConsoleProgress": str(console).lower(),
               "spark.executorEnv.TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", TF_LOG_LEVEL),
               **spark_redaction_conf()}
    if cfg.spark.conf.get("spark.eventLog.enabled") == "true":
        derived["spark.eventLog.dir"] = event_log_dir(cfg)
    return {k: v for k, v in derived.items() if k not in cfg.spark.conf}


def prepare_event_log(cfg: Config) -> None:
    """Create the event log folder when the event log is on: Spark refuses to start without it."""
    if cfg.spark.conf.get("spark.eventLog.enabled") == "true":
        fs, path = files.filesystem(event_log_dir(cfg))
        fs.makedirs(path, exist_ok=True)


def loopback_env(cfg: Config, environ: MutableMapping[str, str]) -> None:
    """On a local master, servers the project starts bind loopback: SPARK_LOCAL_IP=127.0.0.1 in `environ` (the
    environment the driver's JVM starts with), whatever it said before."""
    if cfg.spark.master.startswith("local"):
        environ["SPARK_LOCAL_IP"] = "127.0.0.1"


def session_conf(cfg: Config, launching: bool) -> dict[str, str]:
    """Every setting of the session from `cfg`; `launching`: this process starts the JVM (not under spark-submit),
    so the master, driver memory, log4j settings, jars and derived settings are its own to give."""
    conf: dict[str, str] = {}
    with_delta = bool(cfg.spark.packages) or cfg.storage.engine == "delta-spark"
    if launching:
        conf |= {"spark.master": cfg.spark.master, "spark.driver.memory": cfg.spark.driver_memory}
        if LOG4J.exists():
            opt = f"-Dlog4j2.configurationFile=file:{LOG4J}"
            conf |= {"spark.driver.extraJavaOptions": opt, "spark.executor.extraJavaOptions": opt}
        jars = session_jars(cfg)
        if jars:
            conf["spark.jars"] = ",".join(jars)
        with_delta = with_delta or (cfg.storage.engine != "embedded" and bool(delta_jars()))
        conf |= derived_conf(cfg, sys.stderr.isatty())  # spark-submit.sh passes them itself
    conf |= cfg.spark.conf
    if with_delta:
        conf |= delta_conf(cfg)
    return conf


def _launch_jvm(conf: dict[str, str]) -> None:
    """Start the JVM that this process's sessions use, its settings in a private properties file (removed once the
    JVM has read it) instead of on spark-submit's command line, where pyspark's launcher would put them."""
    previous = os.environ.get("PYSPARK_SUBMIT_ARGS")
    with private_dir() as private:
        props = write_properties(private / PROPERTIES, conf)
        os.environ["PYSPARK_SUBMIT_ARGS"] = shlex.join(["--properties-file", str(props), "--load-spark-defaults"]) + \
            " " + (previous or "pyspark-shell")
        try:
            SparkContext._ensure_initialized()  # returns once the JVM's gateway answers: the file was read
        finally:
            if previous is None:
                del os.environ["PYSPARK_SUBMIT_ARGS"]
            else:
                os.environ["PYSPARK_SUBMIT_ARGS"] = previous


def get_spark(cfg: Config, app_suffix: str = "") -> SparkSession:
    """Return the active session or build one from `cfg` (master, conf, Delta unless the engine is embedded)."""
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    launching = os.environ.get("PIPELINE_SUBMITTED") != "1"  # started from Python: this process launches the JVM
    conf = session_conf(cfg, launching)
    if launching:
        loopback_env(cfg, os.environ)
        prepare_event_log(cfg)
        if SparkContext._gateway is None:
            _launch_jvm(conf)
    builder = SparkSession.builder.appName(cfg.spark.app_name + (f"-{app_suffix}" if app_suffix else ""))
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.spark.log_level)
    sc_conf = spark.sparkContext.getConf()
    LOG.debug("spark conf: %s", " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(sc_conf.getAll())))  # masked
    if sc_conf.get("spark.eventLog.enabled", "false") == "true":
        LOG.info("spark event log: %s", sc_conf.get("spark.eventLog.dir"))
    LOG.info("spark ui: %s", spark.sparkContext.uiWebUrl or "disabled (spark.ui.enabled=false)")
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
