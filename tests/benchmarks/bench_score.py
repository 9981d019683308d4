"""Benchmark (not a test) of batch scoring with the registered model, as ratios measured in one run.

Why: scoring runs the champion as an MLflow Spark UDF (pipelines.stages.score). This measures what that costs
against the two obvious alternatives, and whether the driver's memory stays flat as the input grows (the rows
should stream through the executors, never through the driver):

  A  spark_udf         mlflow.pyfunc.spark_udf(..., result_type="probability double, prediction int",
                       env_manager="local") over `features`, forced by a write to the `noop` format. Python workers
                       are warmed up first (model loaded in each), then best of --repeat timed runs.
  B  raw Keras         the pyfunc's Keras network, loaded once in this process, .predict(matrix, batch_size=4096)
                       over the same rows already in memory as one float32 matrix (the load is timed apart).
  B' pyfunc.predict    the whole pyfunc (schema enforcement, np.stack of the arrays, Keras, threshold) on one pandas
                       DataFrame of the same rows, in this process: what each UDF batch runs, without Spark.
  B" own predict       the same, the model's own predict (serving.ServingModel) called directly: the
                       pyfunc minus MLflow's input schema enforcement (which converts every row's array on its own).
  C  row-at-a-time     a plain F.udf(returnType=DoubleType()) calling Keras .predict on ONE row per call, the model
                       loaded lazily once per Python worker process. Very slow (Keras predict() costs tens of ms a
                       call), so it runs on a small materialized subset of the same rows (--row-udf-rows).
  memory               method A alone in a fresh process (`--driver-mem-run N`) at ~1M and ~4M rows; a thread samples
                       the RSS of the process tree every 0.2 s: driver Python + its JVM (the driver), and apart from
                       it the Python workers (executors' UDF processes; in local mode the executors live in the JVM).

Rows: the features column (array<float>) of the silver feature table the model was trained on (version from the
model's meta), replicated k times (a union of k copies: no shuffle) and written once to Parquet under --data-dir, one
partition per file (one per source partition and copy), so every method reads the same materialized rows. A and C are
checked against Keras on a sample of the rows.

The machine is shared (other engineers' Spark jobs): the load average is recorded around every timed section.

    .venv/bin/python tests/benchmarks/bench_score.py [--rows 1000000] [--big-rows 4000000] [--repeat 2]
        [--row-udf-rows 1000] [--budget-s 900] [--out tests/benchmarks/results/score.txt]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from pyspark.sql import DataFrame

REPO = Path(__file__).resolve().parents[2]
DEFAULT_WORKSPACE = str(REPO / "workspace")
FEATURES = "features"
ROW_CACHE = "_bench_score_row_model"  # sys.modules key of the row UDF's per-process model cache
MEM_TAG = "DRIVER_MEM "
CHECK_ROWS = 200  # rows on which A and C are compared with Keras


# ---- process-tree memory sampling ------------------------------------------------------------------------------
@dataclass
class TreePeaks:
    """Peak RSS (bytes) of this process tree, split into the driver (Python + JVM) and the Python workers."""

    driver_python: int = 0
    driver_jvm: int = 0
    driver_total: int = 0  # peak of the simultaneous sum, not the sum of the peaks
    workers: int = 0
    tree_total: int = 0
    samples: int = 0


@dataclass
class TreeSampler:
    """Samples the RSS of a process and all its descendants every `interval` s in a daemon thread."""

    root: psutil.Process = field(default_factory=psutil.Process)
    interval: float = 0.2
    peaks: TreePeaks = field(default_factory=TreePeaks)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        python = jvm = workers = 0
        try:
            python = self.root.memory_info().rss
            children = self.root.children(recursive=True)
        except psutil.Error:
            return
        for child in children:
            try:
                rss = child.memory_info().rss
                is_jvm = child.name() == "java"
            except psutil.Error:
                continue  # a worker that just exited
            if is_jvm:
                jvm += rss
            else:
                workers += rss
        p = self.peaks
        p.driver_python, p.driver_jvm = max(p.driver_python, python), max(p.driver_jvm, jvm)
        p.driver_total = max(p.driver_total, python + jvm)
        p.workers, p.tree_total = max(p.workers, workers), max(p.tree_total, python + jvm + workers)
        p.samples += 1

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeSampler:
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()


# ---- session, model, rows ------------------------------------------------------------------------------------
def start(workspace: str, app: str) -> tuple[Any, Any]:
    """Config and SparkSession from the project factory, MLflow pointed at the workspace's tracking store."""
    from pipelines.core.config import load_config
    from pipelines.core.session import get_spark
    from pipelines.core.tracking import configure_mlflow

    cfg = load_config("local", [f"storage.workspace={workspace}"])
    configure_mlflow(cfg)  # before the JVM starts, so Python workers inherit MLFLOW_TRACKING_URI
    spark = get_spark(cfg, app)
    # One partition per Parquet file: opening a file "costs" a whole partition, so files are never packed together.
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(256 << 20))
    spark.conf.set("spark.sql.files.openCostInBytes", str(256 << 20))
    return cfg, spark


def rows_path(data_dir: str, rows: int) -> str:
    return f"{data_dir.rstrip('/')}/rows_{rows}"


def materialize(spark: Any, source: Any, replicas: int, path: str) -> int:
    """`replicas` copies of source.features (a union: no shuffle, one file per source partition and copy)."""
    from pyspark.sql import functions as F

    base = source.select(FEATURES)
    n = base.count() * replicas
    reduce(DataFrame.union, [base] * replicas).write.mode("overwrite").parquet(path)
    written = spark.read.parquet(path).select(F.count("*")).first()[0]
    if written != n:
        raise RuntimeError(f"{path}: wrote {written} rows, expected {n}")
    return n


def read_rows(spark: Any, path: str) -> Any:
    return spark.read.parquet(path).select(FEATURES)


def load_matrix(path: str, width: int) -> np.ndarray:
    """The Parquet rows at `path` as one float32 matrix (pyarrow, in this process)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    column = ds.dataset(path, format="parquet").to_table(columns=[FEATURES]).column(FEATURES).combine_chunks()
    if column.null_count or pc.min(pc.list_value_length(column)).as_py() != width:
        raise ValueError(f"{path}: null or short feature arrays")
    return column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, width)


def score_udf(spark: Any, model_uri: str) -> Any:
    import mlflow

    from pipelines.training.pyfunc import RESULT_TYPE

    return mlflow.pyfunc.spark_udf(spark, model_uri, result_type=RESULT_TYPE, env_manager="local")


def force(df: Any) -> None:
    df.write.format("noop").mode("overwrite").save()


def row_udf(local_model: str, loads: Any) -> Any:
    """Row-at-a-time UDF: Keras .predict on one row per call; the model loaded once per Python worker process.

    The cache lives in a module registered in sys.modules: a dict global of this script would be pickled by value
    with the function and so rebuilt for every task; sys.modules lives as long as the worker process.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType

    def predict_one(features: list[float] | None) -> float | None:
        import types

        if features is None:
            return None
        holder = sys.modules.get(ROW_CACHE)
        if holder is None:
            import mlflow

            holder = types.ModuleType(ROW_CACHE)
            holder.model = mlflow.pyfunc.load_model(local_model).unwrap_python_model().model  # type: ignore
            sys.modules[ROW_CACHE] = holder
            loads.add(1)
        x = np.asarray(features, dtype=np.float32).reshape(1, -1)
        return float(holder.model.predict(x, verbose=0)[0, 0])  # type: ignore[attr-defined]

    return F.udf(predict_one, DoubleType())


# ---- timing helpers ------------------------------------------------------------------------------------------
@contextmanager
def timed(into: dict[str, float], key: str) -> Iterator[None]:
    into[f"{key}.load_before"] = os.getloadavg()[0]
    t0 = time.perf_counter()
    yield
    into[key] = time.perf_counter() - t0
    into[f"{key}.load_after"] = os.getloadavg()[0]


def best_of(repeat: int, fn: Callable[[], None]) -> tuple[float, list[float]]:
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return min(runs), runs


@dataclass
class RawResult:
    best: float
    runs: list[float]
    timings: dict[str, float]
    diff_a: float
    diff_c: float


def raw_model(path: str, width: int, local_model: str, repeat: int, check: Any) -> RawResult:
    """B and B': the rows as one matrix in this process, Keras predict (best of `repeat`) and pyfunc.predict.

    `check` (pandas: features, a, c) holds A's and C's probabilities for the subset, compared with Keras here.
    """
    import mlflow
    import pandas as pd

    t: dict[str, float] = {}
    with timed(t, "collect"):
        x = load_matrix(path, width)
    pyfunc = mlflow.pyfunc.load_model(local_model)
    keras = pyfunc.unwrap_python_model().model
    keras.predict(x[:10_000], batch_size=4096, verbose=0)  # warm-up: tracing
    t["B.load_before"] = os.getloadavg()[0]
    best, runs = best_of(repeat, lambda: keras.predict(x, batch_size=4096, verbose=0))
    t["B.load_after"] = os.getloadavg()[0]
    xc = np.stack(check[FEATURES].map(lambda v: np.asarray(v, dtype=np.float32)).to_numpy())
    ref = keras.predict(xc, batch_size=4096, verbose=0).reshape(-1)
    diff_a = float(np.max(np.abs(check["a"].to_numpy() - ref)))
    diff_c = float(np.max(np.abs(check["c"].to_numpy() - ref)))

    frame = pd.DataFrame({FEATURES: list(x)})  # one array per row, as the UDF's Arrow batches arrive
    pyfunc.predict(frame.iloc[:10_000])  # warm-up
    with timed(t, "B2"):
        pyfunc.predict(frame)
    inner = pyfunc.unwrap_python_model()  # serving.ServingModel: np.stack, Keras, threshold
    with timed(t, "B3"):
        inner.predict(None, frame)
    return RawResult(best, runs, t, diff_a, diff_c)


# ---- subprocess mode: driver memory of method A -------------------------------------------------------------
def driver_mem_run(rows: int, data_dir: str, workspace: str, model_uri: str) -> int:
    """Method A alone in this fresh process over rows_<rows>; prints one MEM_TAG JSON line with the peaks."""
    with TreeSampler() as sampler:
        t0 = time.perf_counter()
        _, spark = start(workspace, f"bench-score-mem-{rows}")
        udf = score_udf(spark, model_uri)
        df = read_rows(spark, rows_path(data_dir, rows))
        partitions = df.rdd.getNumPartitions()
        t1 = time.perf_counter()
        force(df.select(udf(FEATURES).alias("p")))
        score_s = time.perf_counter() - t1
        total_s = time.perf_counter() - t0
        spark.stop()
    out = {"rows": rows, "partitions": partitions, "score_s": score_s, "total_s": total_s,
           **sampler.peaks.__dict__}
    print(MEM_TAG + json.dumps(out), flush=True)
    return 0


def measure_driver_mem(rows: int, args: argparse.Namespace, model_uri: str) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--driver-mem-run", str(rows), "--data-dir",
           args.data_dir, "--workspace", args.workspace, "--model-uri", model_uri]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    for line in proc.stdout.splitlines():
        if line.startswith(MEM_TAG):
            return json.loads(line[len(MEM_TAG):])
    raise RuntimeError(f"driver memory run of {rows} rows failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")


# ---- main ----------------------------------------------------------------------------------------------------
def mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000, help="at least this many rows for A, B, B' (and memory)")
    p.add_argument("--big-rows", type=int, default=4_000_000, help="at least this many rows for the 2nd memory run")
    p.add_argument("--repeat", type=int, default=2, help="timed runs of A and B (best is reported)")
    p.add_argument("--row-udf-rows", type=int, default=1_000, help="rows for the row-at-a-time UDF (C)")
    p.add_argument("--budget-s", type=float, default=900, help="skip the big memory run if it would exceed this")
    p.add_argument("--workspace", default=DEFAULT_WORKSPACE, help="workspace holding the champion and its tables")
    p.add_argument("--data-dir", default="/tmp/bench-score", help="where the replicated Parquet rows are written")
    p.add_argument("--out", default=str(REPO / "tests/benchmarks/results/score.txt"))
    p.add_argument("--keep-data", action="store_true", help="leave the Parquet rows in --data-dir")
    p.add_argument("--driver-mem-run", type=int, metavar="N", help=argparse.SUPPRESS)
    p.add_argument("--model-uri", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # inherited by the Python workers
    if args.driver_mem_run:
        return driver_mem_run(args.driver_mem_run, args.data_dir, args.workspace, args.model_uri)

    t_start = time.perf_counter()
    load_start = os.getloadavg()
    import mlflow
    import pyspark
    import tensorflow as tf

    from pipelines.core.delta import DeltaStore
    from pipelines.core.logs import setup_logging
    from pipelines.stages.score import resolve_model

    setup_logging("WARNING")
    cfg, spark = start(args.workspace, "bench-score")
    model = resolve_model(cfg)
    meta = model.meta
    width = int(meta["vector_size"])
    local_model = mlflow.artifacts.download_artifacts(model.uri)
    source = DeltaStore(spark, cfg.storage.engine).read(meta["feature_table"], int(meta["feature_table_version"]))
    base_rows = source.count()
    t: dict[str, float] = {}

    # -- the rows, materialized once --------------------------------------------------------------------------
    data_dir = args.data_dir.rstrip("/")
    shutil.rmtree(data_dir, ignore_errors=True)
    k_main, k_big = math.ceil(args.rows / base_rows), math.ceil(args.big_rows / base_rows)
    with timed(t, "materialize"):
        n_main = materialize(spark, source, k_main, rows_path(data_dir, k_main * base_rows))
        n_big = materialize(spark, source, k_big, rows_path(data_dir, k_big * base_rows))
        sub_path = f"{data_dir}/row_subset"
        read_rows(spark, rows_path(data_dir, n_main)).limit(args.row_udf_rows).repartition(4) \
            .write.mode("overwrite").parquet(sub_path)
    rows_df = read_rows(spark, rows_path(data_dir, n_main))
    sub_df = read_rows(spark, sub_path)
    n_sub = sub_df.count()
    partitions, sub_partitions = rows_df.rdd.getNumPartitions(), sub_df.rdd.getNumPartitions()

    # -- A: spark_udf -----------------------------------------------------------------------------------------
    udf = score_udf(spark, model.uri)
    force(sub_df.select(udf(FEATURES).alias("p")))  # warm-up: each Python worker loads the model
    t["A.load_before"] = os.getloadavg()[0]
    a_best, a_runs = best_of(args.repeat, lambda: force(rows_df.select(udf(FEATURES).alias("p"))))
    t["A.load_after"] = os.getloadavg()[0]

    # -- C: row-at-a-time Python UDF --------------------------------------------------------------------------
    loads = spark.sparkContext.accumulator(0)
    one_row = row_udf(local_model, loads)
    force(sub_df.limit(20).repartition(2).select(one_row(FEATURES).alias("p")))  # warm-up: load in the workers
    warm_loads = loads.value
    with timed(t, "C"):
        force(sub_df.select(one_row(FEATURES).alias("p")))
    timed_loads = loads.value - warm_loads

    # correctness on the subset: A and C against the Keras network on the same rows (outside every timer)
    check = sub_df.limit(CHECK_ROWS).select(FEATURES, udf(FEATURES)["probability"].alias("a"),
                                            one_row(FEATURES).alias("c")).toPandas()
    spark.stop()  # B runs in this process alone; the memory runs start their own sessions

    # -- B: raw model in one process --------------------------------------------------------------------------
    b = raw_model(rows_path(data_dir, n_main), width, local_model, args.repeat, check)
    t.update(b.timings)
    b_best, b_runs, diff_a, diff_c = b.best, b.runs, b.diff_a, b.diff_c

    # -- memory: method A in fresh processes at ~1M and ~4M rows ------------------------------------------------
    mem = [measure_driver_mem(n_main, args, model.uri)]
    elapsed = time.perf_counter() - t_start
    projected = mem[0]["total_s"] + (n_big / n_main - 1) * a_best  # the extra rows at A's warm rate
    big_note = ""
    if elapsed + projected <= args.budget_s:
        mem.append(measure_driver_mem(n_big, args, model.uri))
    else:
        big_note = (f"  {n_big:,} rows SKIPPED: projected {projected:.0f}s on top of {elapsed:.0f}s elapsed "
                    f"exceeds --budget-s {args.budget_s:.0f}")
    load_end = os.getloadavg()
    if not args.keep_data:
        shutil.rmtree(data_dir, ignore_errors=True)

    # -- report -----------------------------------------------------------------------------------------------
    a_rate = n_main / a_best
    table = [
        ("A  spark_udf, noop write (local[2])", n_main, a_best, t["A.load_before"], t["A.load_after"]),
        ("B  raw Keras predict, one process", n_main, b_best, t["B.load_before"], t["B.load_after"]),
        ("B' pyfunc.predict(pandas), one process", n_main, t["B2"], t["B2.load_before"], t["B2.load_after"]),
        ("B\" model's own predict, no MLflow schema", n_main, t["B3"], t["B3.load_before"], t["B3.load_after"]),
        ("C  row-at-a-time Python UDF (local[2])", n_sub, t["C"], t["C.load_before"], t["C.load_after"]),
    ]
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    threads = tf.config.threading.get_intra_op_parallelism_threads() or "default (all cores)"
    lines = [
        "bench_score: batch scoring throughput and driver memory (tests/benchmarks/bench_score.py)",
        f"machine: {platform.machine()}, nproc {len(os.sched_getaffinity(0))}, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, shared; master {cfg.spark.master}, "
        f"driver memory {cfg.spark.driver_memory}",
        f"load average (1/5/15 min): before {'/'.join(f'{v:.2f}' for v in load_start)}, "
        f"after {'/'.join(f'{v:.2f}' for v in load_end)}",
        f"software: Python {platform.python_version()}, PySpark {pyspark.__version__}, TensorFlow {tf.__version__}, "
        f"MLflow {mlflow.__version__}; commit {commit}; TF intra-op threads {threads}",
        f"model: {model.uri} ({model.name}{model.asked}), vector size {width}",
        f"rows: {meta['feature_table']} v{meta['feature_table_version']} ({base_rows:,} rows) x {k_main} "
        f"= {n_main:,} rows in {partitions} Parquet files/partitions (x {k_big} = {n_big:,} for memory); "
        f"C on the first {n_sub:,} of them in {sub_partitions} partitions; Arrow batch "
        f"{spark_conf_batch(cfg)} rows; materialized in {t['materialize']:.0f}s",
        "",
        f"{'method':<41}{'rows':>11}{'seconds':>10}{'rows/s':>12}{'vs spark_udf':>14}   load 1-min before/after",
    ]
    for name, rows, secs, lb, la in table:
        rate = rows / secs
        lines.append(f"{name:<41}{rows:>11,}{secs:>10.2f}{rate:>12,.0f}{rate / a_rate:>13.3f}x   {lb:.2f}/{la:.2f}")
    lines += [
        "",
        f"A: best of {args.repeat} after a warm-up that loads the model in each Python worker; runs "
        f"{', '.join(f'{s:.1f}s' for s in a_runs)}. B: best of {args.repeat} after a warm-up; runs "
        f"{', '.join(f'{s:.2f}s' for s in b_runs)}; collecting the rows to one numpy matrix (pyarrow, this "
        f"process) took {t['collect']:.1f}s, not in B. B', B\": one run each after a warm-up, the pandas "
        "DataFrame (one array per row, as a UDF batch gets) built outside the timer.",
        f"C: Keras .predict per row; model loads in the timed run {timed_loads} (warm-up loaded {warm_loads}, "
        f"one per Python worker process).",
        f"ratios: spark_udf / raw Keras = {b_best / a_best:.3f}x, "
        f"spark_udf / pyfunc.predict = {t['B2'] / a_best:.3f}x, "
        f"spark_udf / row UDF = {a_rate / (n_sub / t['C']):,.0f}x (rows/s)",
        f"check on {CHECK_ROWS} subset rows: max |probability - Keras| A {diff_a:.1e}, C {diff_c:.1e}",
        "",
        "driver peak RSS, method A alone in a fresh process (process tree sampled every 0.2 s)",
        f"{'rows':>11}{'driver py':>12}{'driver JVM':>12}{'driver sum':>12}{'py workers':>12}{'tree':>10}"
        f"{'score s':>9}{'process s':>11}",
    ]
    for r in mem:
        lines.append(f"{r['rows']:>11,}{mb(r['driver_python']):>12}{mb(r['driver_jvm']):>12}"
                     f"{mb(r['driver_total']):>12}{mb(r['workers']):>12}{mb(r['tree_total']):>10}"
                     f"{r['score_s']:>9.1f}{r['total_s']:>11.1f}")
    if big_note:
        lines.append(big_note)
    if len(mem) == 2:
        lines.append(f"  ratio {mem[1]['rows'] / mem[0]['rows']:.0f}x rows: driver sum "
                     f"{mem[1]['driver_total'] / mem[0]['driver_total']:.2f}x, driver Python "
                     f"{mem[1]['driver_python'] / mem[0]['driver_python']:.2f}x, driver JVM "
                     f"{mem[1]['driver_jvm'] / mem[0]['driver_jvm']:.2f}x, Python workers "
                     f"{mem[1]['workers'] / mem[0]['workers']:.2f}x")
    lines.append(f"\ntotal wall {time.perf_counter() - t_start:.0f}s")
    report = "\n".join(lines) + "\n"
    print(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    return 0


def spark_conf_batch(cfg: Any) -> str:
    return str(cfg.spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch", 10_000))


if __name__ == "__main__":
    sys.exit(main())
