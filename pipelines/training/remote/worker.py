"""The training process: one per rank and attempt, started by the barrier task (task.py) as
`python -m pipelines.training.remote.worker <workdir>`. This module trains Keras models; with
training.framework pytorch the same process runs torch_worker.train_torch instead (same task file, same result).

It reads (WorkerSpec, TaskInfo) from <workdir>/task.pkl (a local file its own task wrote, mode 0600: it holds the
launch's secret), sets TensorFlow's threads, starts the backend (hvd.init(), or MultiWorkerMirroredStrategy),
builds the network, loss and metrics of the spec's head, streams its Petastorm shard, runs model.fit with per-epoch
checkpoints (rank 0) and writes its WorkerResult to result.pkl, or its traceback to error.txt and exits 1.
"""

from __future__ import annotations

import functools
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import cloudpickle

from pipelines.training import checkpoints
from pipelines.training.remote.task import TaskInfo, put
from pipelines.training.spec import PROGRESS, STARTED, WorkerResult, WorkerSpec


def main(argv: list[str]) -> int:
    """Entry of the training process: read the task, train, write result.pkl (or error.txt and exit 1)."""
    workdir = Path(argv[0])
    spec, task = cloudpickle.loads((workdir / "task.pkl").read_bytes())
    try:
        if spec.training.get("framework") == "pytorch":
            from pipelines.training.remote.torch_worker import train_torch

            result = train_torch(spec, task)
        else:
            result = train_worker(spec, task)
    except BaseException:
        (workdir / "error.txt").write_text(traceback.format_exc())
        return 1
    (workdir / "result.pkl").write_bytes(cloudpickle.dumps(result))
    return 0


def train_worker(spec: WorkerSpec, task: TaskInfo) -> WorkerResult:
    """One rank's training: distributed set-up, Petastorm shard, fit with checkpoints; rank 0 returns weights."""
    import tensorflow as tf

    from pipelines.training.callbacks import (
        EpochRecorder,
        EpochTimer,
        FaultInjection,
        ResumableEarlyStopping,
    )
    from pipelines.training.heads import get_head
    from pipelines.training.model import build_network, make_optimizer, weights_checksum
    from pipelines.training.remote.backends import start_backend

    conf = spec.training
    phases: dict[str, float] = {}
    mark = time.perf_counter()
    tf.config.threading.set_intra_op_parallelism_threads(conf["threads_per_worker"])
    tf.config.threading.set_inter_op_parallelism_threads(conf["threads_per_worker"])
    dist = start_backend(spec, task)
    head = get_head(spec.head)
    rank, size = dist.rank, dist.size
    tf.keras.utils.set_random_seed(conf["seed"])

    opt_conf = conf["optimizer"]
    lr = opt_conf["learning_rate"] * (size if opt_conf["scale_by_workers"] else 1)
    with dist.scope():
        model = build_network(conf["network"], spec.vector_size, head.name, spec.num_classes, spec.input_shape,
                              spec.label_scale)
        optimizer = dist.wrap(make_optimizer(opt_conf, lr))
        model.compile(optimizer=optimizer, loss=head.loss(), metrics=head.keras_metrics())
        ckpt = checkpoints.resume_point(spec.checkpoint_dir, spec.resume_from, rank)
        if ckpt is not None:
            model.set_weights(ckpt.weights)
            optimizer._create_all_weights(model.trainable_variables)  # slots must exist before their state
            optimizer.set_weights(ckpt.optimizer)
    initial_epoch = ckpt.epoch + 1 if ckpt else 0
    if rank == 0:
        report_start(spec, task.attempt, initial_epoch, ckpt.epoch if ckpt else None)
    history: list[dict[str, float]] = list(ckpt.meta.get("history", [])) if ckpt else []
    es = ResumableEarlyStopping(ckpt.meta.get("early_stopping") if ckpt else None,
                                **head.early_stopping(conf["early_stopping"]))
    timer = EpochTimer()
    report = functools.partial(put, spec, PROGRESS, str(rank)) if rank == 0 else None
    callbacks = [*dist.callbacks(lr, conf, spec.steps_per_epoch), timer,
                 FaultInjection(conf["fault"], rank, task.attempt, dist.sync), es,
                 EpochRecorder(history, es, spec.checkpoint_dir if rank == 0 else None,
                               conf["keep_checkpoints"], task.attempt, report, ckpt.best if ckpt else None)]
    batch = conf["batch_size"]
    epochs = conf["epochs"]
    reader = {"batch_size": batch, "cur_shard": rank, "shard_count": size, "num_epochs": None,
              "workers_count": conf["data"]["reader_threads"], "seed": conf["seed"] + rank,
              "shuffling_queue_capacity": conf["data"]["shuffle_buffer"] or None,
              **({"transform_spec": image_transform(spec.input_shape)} if spec.input_shape else {})}
    val_reader = {**reader, "shuffling_queue_capacity": None}
    with spec.train_data.make_tf_dataset(**reader) as train_ds, \
            spec.val_data.make_tf_dataset(**val_reader) as val_ds:
        train_in = dist.dataset(_as_xy(train_ds, spec, head, spec.class_weight))
        val_in = dist.dataset(_as_xy(val_ds, spec, head, None))
        phases["setup"], mark = time.perf_counter() - mark, time.perf_counter()
        if initial_epoch < epochs:
            model.fit(train_in, epochs=epochs, initial_epoch=initial_epoch, steps_per_epoch=spec.steps_per_epoch,
                      validation_data=val_in, validation_steps=spec.validation_steps, callbacks=callbacks,
                      verbose=0)
        phases["fit"], mark = time.perf_counter() - mark, time.perf_counter()
    phases["close_readers"] = time.perf_counter() - mark
    weights = model.get_weights()
    # the best epoch's weights as the newest checkpoint records them (the resumed one's when no epoch ran)
    best = (checkpoints.load_best(spec.checkpoint_dir) or (ckpt.best if ckpt else None)) if rank == 0 else None
    ran = len(timer.train_seconds)
    result = WorkerResult(
        rank=rank, size=size, partition=task.partition, attempt=task.attempt, host=task.host,
        initial_epoch=initial_epoch, epochs_completed=len(history), stopped_early=es.stopped_epoch > 0,
        weights_sha256=weights_checksum(weights), train_seconds=sum(timer.train_seconds),
        samples=ran * spec.steps_per_epoch * batch,
        history=history if rank == 0 else [],
        weights=(best[1] if best else weights) if rank == 0 else None,
        seconds=phases,
    )
    dist.shutdown()
    return result


def report_start(spec: WorkerSpec, attempt: int, initial_epoch: int, checkpoint_epoch: int | None) -> None:
    """Tell the driver which epoch this attempt starts at and from which checkpoint (it logs both)."""
    try:
        put(spec, STARTED, str(attempt), {"attempt": attempt, "initial_epoch": initial_epoch,
                                          "checkpoint_epoch": checkpoint_epoch})
    except Exception as e:  # informational, like the progress reports
        print(f"start report failed: {e}", flush=True)


def _reshape_rows(shape: tuple[int, ...], pdf: Any) -> Any:
    """TransformSpec function: each row's flat HWC float array -> an array of the image shape."""
    import numpy as np

    pdf["features"] = [np.asarray(v, dtype=np.float32).reshape(shape) for v in pdf["features"]]
    return pdf


def image_transform(shape: tuple[int, ...]) -> Any:
    """Petastorm TransformSpec that gives `features` the image shape (height, width, channels) in the reader."""
    import numpy as np
    from petastorm import TransformSpec

    return TransformSpec(functools.partial(_reshape_rows, tuple(shape)),
                         edit_fields=[("features", np.float32, tuple(shape), False)],
                         selected_fields=["features", "label"])


def _as_xy(ds: Any, spec: WorkerSpec, head: Any, class_weight: dict[int, float] | None) -> Any:
    """Petastorm batches (namedtuples) -> the head's (features, target[, weight]) float32 tensors.

    features: [batch, vector_size], or [batch, *input_shape] for images. The target is the head's: [batch, 1]
    floats for binary (sigmoid) and regression, [batch] class ids for multiclass (softmax). Class weights travel
    as per-row sample weights (what Keras' class_weight does), which also works for tf-mwms' distributed datasets.
    """
    import tensorflow as tf

    shape = (-1, *spec.input_shape) if spec.input_shape else (-1, spec.vector_size)
    weights = tf.constant([(class_weight or {}).get(k, 1.0) for k in range(max(spec.num_classes, 1))], tf.float32)

    def to_xyw(b: Any) -> tuple[Any, ...]:
        return head.batch(tf.reshape(tf.cast(b.features, tf.float32), shape), b.label, weights)

    return ds.map(to_xyw, num_parallel_calls=1)


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown: TensorFlow/gRPC threads can hang it
