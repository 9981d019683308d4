"""Benchmark (not a test) of the train job's two hot paths, through the one harness.

  feeding   training steps/s of the job's network in this process with one TensorFlow thread, fed by the job's own
            Petastorm reader (ParquetCache.make_tf_dataset, as every Horovod rank reads: reader threads, shuffle
            buffer, prefetch from training.data) against fed from in-memory numpy with the same tf.data options
            (the whole array as one element through the same shuffle_and_batch: blocks of the shuffle buffer
            permuted at once, batch, fixed prefetch without autotuning, the same map to (x, y, weight)). Knob
            variants: without the shuffle buffer on both sides, Petastorm with 1 and 4 reader threads, and numpy the
            per-row way (from_tensor_slices -> shuffle(buffer) -> batch -> prefetch AUTOTUNE, the pipeline of
            Petastorm's converter); `*_read` sides only draw the same batches (no training step): what each input
            path delivers alone.
  scaling   samples/s of 2 Horovod workers against 1 (one TF thread each), through the job's own barrier-mode fit
            (fit_on: barrier stage, Petastorm shards, Horovod over gloo), at per-worker batches 256 and 2048;
            samples/s from rank 0's per-epoch training time over the epochs after the first (tracing); the launch
            wall time is the side's seconds. No warm-up round: the untimed first epoch of every run is the warm-up.
  comm      one more 2-worker run at each batch with training.horovod.timeline: the share of the training span in
            which Horovod's timeline shows an allreduce running (ALLREDUCE) and waiting for the other rank
            (NEGOTIATE_ALLREDUCE).

Data: the feature table of the latest features run in the workspace (PIPELINE_HOME; the README's run-all makes it).

    .venv/bin/python -m tests.benchmarks.bench_train [--steps 600] [--runs 3] [--batches 256,2048]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import namedtuple
from pathlib import Path
from typing import Any

import numpy as np
from pyspark.sql import functions as F

from pipelines.core.config import Config, load_config
from pipelines.core.delta import DeltaStore
from pipelines.core.logs import setup_logging
from pipelines.core.session import get_spark
from pipelines.training import (
    Launch,
    TrainingInputError,
    fit_on,
    load_training_data,
    petastorm_caches,
    resolve_source,
)
from pipelines.training.data import ParquetCache, shuffle_and_batch
from pipelines.training.heads import get_head
from tests.benchmarks.harness import Report, measure

BATCH = 256
HEAD = get_head("binary")


def run_cfg(cfg: Config, workers: int, batch: int, steps: int, epochs: int, timeline: str | None = None) -> Config:
    return load_config("local", [
        f"storage.workspace={cfg.workspace}", f"training.num_workers={workers}", "training.threads_per_worker=1",
        f"training.epochs={epochs}", f"training.batch_size={batch}", f"training.max_steps_per_epoch={steps}",
        "training.optimizer.warmup_epochs=0", "training.early_stopping.patience=100", "training.max_attempts=1",
        *([f"training.horovod.timeline={timeline}"] if timeline else [])])


def timeline_shares(path: str) -> dict[str, float]:
    """Share of the timeline's span in which some tensor is in a top-level ALLREDUCE / NEGOTIATE_ALLREDUCE."""
    text = Path(path).read_text().strip().rstrip(",")
    events = json.loads(text if text.endswith("]") else text + "]")
    stacks: dict[Any, list[tuple[str, float]]] = {}
    spans: dict[str, list[tuple[float, float]]] = {"ALLREDUCE": [], "NEGOTIATE_ALLREDUCE": []}
    times = [e["ts"] for e in events if "ts" in e]
    for e in events:
        stack = stacks.setdefault(e.get("pid"), [])
        if e.get("ph") == "B":
            stack.append((e.get("name", ""), e["ts"]))
        elif e.get("ph") == "E" and stack:
            name, t0 = stack.pop()
            if not stack and name in spans:
                spans[name].append((t0, e["ts"]))
    span = (max(times) - min(times)) or 1.0

    def union(iv: list[tuple[float, float]]) -> float:
        total, end = 0.0, -1e30
        for a, b in sorted(iv):
            if b > end:
                total += b - max(a, end)
                end = b
        return total

    return {"allreduce_share": union(spans["ALLREDUCE"]) / span,
            "negotiate_share": union(spans["NEGOTIATE_ALLREDUCE"]) / span}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=600, help="steps per feeding run; per epoch at batch 256 (scaling)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per scaling run (the first is not timed)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per side")
    p.add_argument("--batches", default="256,2048", help="per-worker batch sizes of the scaling runs")
    p.add_argument("--skip-scaling", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    setup_logging("WARNING")
    cfg = load_config("local")
    spark = get_spark(cfg, "bench-train")
    store = DeltaStore(spark, cfg.storage.engine)
    try:
        source = resolve_source(cfg, None)
    except TrainingInputError as e:
        print(f"no feature table to benchmark on: {e}", file=sys.stderr)
        return 2
    data = load_training_data(store, cfg, source, HEAD)
    weights = HEAD.class_weights(data.per_class, 2) or {0: 1.0, 1: 1.0}
    report = Report("train", [], [f"data: {source.table_path} v{source.table_version} (features run {source.run_id}),"
                                  f" vector size {source.vector_size}; network "
                                  f"{cfg.training.network.model_dump(mode='json')}; training.data "
                                  f"{cfg.training.data.model_dump(mode='json')}"])
    ratios: list[tuple[str, str, str | None]] = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        if not args.skip_scaling:
            two = run_cfg(cfg, 2, BATCH, args.steps, args.epochs)
            with petastorm_caches(two, data.rows) as caches:
                for batch in [int(b) for b in args.batches.split(",")]:
                    steps = max(1, args.steps * BATCH // batch)

                    def side(workers: int, batch: int = batch, steps: int = steps, timeline: str | None = None
                             ) -> Any:
                        def run() -> dict[str, float]:
                            c = run_cfg(cfg, workers, batch, steps, args.epochs, timeline)
                            launch = Launch(source.vector_size, steps, max(1, steps // 4),
                                            f"{tmp}/ckpt-{os.urandom(4).hex()}", class_weight=weights)
                            res = fit_on(spark, c.training, caches, launch)
                            timed = res[0].history[1:]
                            secs = sum(h["epoch_train_seconds"] for h in timed)
                            out = {"samples_per_s": len(timed) * steps * batch * workers / secs}
                            return out | (timeline_shares(timeline) if timeline else {})
                        return run

                    report.runs += measure({f"hvd_1w@{batch}": side(1), f"hvd_2w@{batch}": side(2)},
                                           runs=args.runs, warmup=0)
                    report.runs += measure({f"hvd_2w_timeline@{batch}": side(2, timeline=f"{tmp}/tl-{batch}.json")},
                                           runs=3, warmup=0)
                    ratios.append((f"hvd_2w@{batch}", f"hvd_1w@{batch}", "samples_per_s"))
                    ratios.append((f"hvd_2w_timeline@{batch}", f"hvd_2w@{batch}", "samples_per_s"))
            report.write(ratios)  # the scaling runs are on disk even if feeding fails
        report.runs += feeding(spark, cfg, data, weights, source.vector_size, args.steps, args.runs, tmp)
    data.rows.unpersist()
    ratios += [("petastorm", "numpy", "steps"), ("petastorm_noshuffle", "numpy_noshuffle", "steps"),
               ("petastorm_1thread", "petastorm", "steps"), ("petastorm_4threads", "petastorm", "steps"),
               ("petastorm_read", "numpy_read", "steps"), ("petastorm_read", "numpy", "steps"),
               ("petastorm", "numpy_rowshuffle", "steps"), ("numpy", "numpy_rowshuffle", "steps")]
    print(report.write(ratios).read_text())
    spark.stop()
    return 0


def feeding(spark: Any, cfg: Config, data: Any, weights: dict[int, float], n: int, steps: int, runs: int,
            tmp: str) -> list[Any]:
    """Steps/s of one model in this process (1 TF thread) fed by the job's Petastorm reader vs in-memory numpy."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from pipelines.training.model import build_network, make_optimizer
    from pipelines.training.remote.worker import _as_xy
    from pipelines.training.spec import WorkerSpec

    dc = cfg.training.data
    train = data.rows.filter(F.col("split") == "train").select("features", "label")
    cache = ParquetCache.materialize(train, f"file://{tmp}/petastorm", cfg.training.num_workers * dc.files_per_worker)
    pdf = train.toPandas()
    x = np.stack(pdf["features"].to_numpy()).astype(np.float32)
    y = pdf["label"].to_numpy().astype(np.float32)
    spec = WorkerSpec(backend="horovod", training={}, vector_size=n, steps_per_epoch=steps, validation_steps=1,
                      class_weight=weights, train_data=cache, val_data=cache, checkpoint_dir=tmp, resume_from=None)
    model = build_network(cfg.training.network.model_dump(mode="json"), n)
    model.compile(optimizer=make_optimizer(cfg.training.optimizer.model_dump(mode="json"), 0.001),
                  loss=HEAD.loss(), metrics=HEAD.keras_metrics())

    def numpy_ds(shuffle: int) -> Any:
        whole = tf.data.Dataset.from_tensors(Batch(x, y)).repeat()  # one element per epoch, as Petastorm's chunks
        return _as_xy(shuffle_and_batch(whole, BATCH, shuffle, 7), spec, HEAD, weights)

    def numpy_rows(shuffle: int) -> Any:
        ds = tf.data.Dataset.from_tensor_slices(Batch(x, y)).shuffle(shuffle, seed=7)
        return _as_xy(ds.repeat().batch(BATCH).prefetch(tf.data.AUTOTUNE), spec, HEAD, weights)

    def fit(ds: Any) -> dict[str, float]:
        model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0)
        return {"steps": float(steps)}

    def drain(ds: Any) -> dict[str, float]:
        for _ in ds.take(steps):
            pass
        return {"steps": float(steps)}

    readers = {"petastorm": (dc.reader_threads, dc.shuffle_buffer), "petastorm_noshuffle": (dc.reader_threads, 0),
               "petastorm_1thread": (1, dc.shuffle_buffer), "petastorm_4threads": (4, dc.shuffle_buffer)}
    contexts = {name: cache.make_tf_dataset(batch_size=BATCH, num_epochs=None, workers_count=threads, seed=7,
                                            shuffling_queue_capacity=shuffle or None)
                for name, (threads, shuffle) in readers.items()}
    try:
        sets = {name: _as_xy(ctx.__enter__(), spec, HEAD, weights) for name, ctx in contexts.items()}
        sets |= {"numpy": numpy_ds(dc.shuffle_buffer), "numpy_noshuffle": numpy_ds(0),
                 "numpy_rowshuffle": numpy_rows(dc.shuffle_buffer)}
        sides = {name: (lambda ds=ds: fit(ds)) for name, ds in sets.items()}
        sides |= {f"{name}_read": (lambda ds=sets[name]: drain(ds)) for name in ("petastorm", "numpy")}
        return measure(sides, runs=runs)
    finally:
        for ctx in contexts.values():
            ctx.__exit__(None, None, None)
        cache.delete()


Batch = namedtuple("Batch", ["features", "label"])  # what a Petastorm batch is to _as_xy (tf.data takes namedtuples)


if __name__ == "__main__":
    sys.exit(main())
