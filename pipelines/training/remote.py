"""Worker side: what runs inside each Spark barrier task, and the training process it starts.

`barrier_task(spec)` is the function of the barrier stage. Per task it:
  1. reads its partition and every task's address from BarrierTaskContext;
  2. agrees on an attempt token (allGather of task ids) and lets rank 0 register the attempt with the driver,
     which resets Horovod's rendezvous for a retried stage and answers the attempt number;
  3. derives its Horovod slot (rank, local rank, ...) from the host assignment, or for tf-mwms builds TF_CONFIG
     from an allGather of host:port, and picks its GPUs from the task's resources;
  4. starts the training process (`python -m pipelines.training.remote`) with that environment and waits.

The training process runs `train_worker`: thread settings, hvd.init() (or MultiWorkerMirroredStrategy), the
Petastorm shard, model.fit with per-epoch checkpoints, and it returns a WorkerResult. It is a fresh process per
attempt, because TensorFlow's thread pools, CUDA_VISIBLE_DEVICES and collective ops are fixed at start-up while
Spark reuses its Python workers across tasks. It dies with its task (PR_SET_PDEATHSIG). A failure is reported to
the driver (rank and traceback) before the task raises, so the driver can name the rank that failed.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle

from pipelines.core import files
from pipelines.training import checkpoints
from pipelines.training.spec import ABORT, ATTEMPT, ATTEMPT_NO, ERROR, PROGRESS, WorkerResult, WorkerSpec, assign_ranks

LOG_TAIL_LINES = 60


class WorkerFailed(RuntimeError):
    """A training process ended without a result; the message names the rank and carries its traceback."""


@dataclass(frozen=True)
class TaskInfo:
    """Where a training process sits: its rank, the attempt, and the partition and host of its task."""

    rank: int
    size: int
    local_rank: int
    partition: int
    attempt: int
    token: str
    host: str


# ---- the barrier task (runs in the Spark Python worker) --------------------------------------------------------
def barrier_task(spec: WorkerSpec) -> Callable[[Iterable[Any]], Iterator[WorkerResult]]:
    """The mapPartitions function of the barrier stage: one call per rank, yields that rank's WorkerResult."""

    def run(_: Iterable[Any]) -> Iterator[WorkerResult]:
        from pyspark import BarrierTaskContext

        ctx = BarrierTaskContext.get()
        partition = ctx.partitionId()
        hosts = ["127.0.0.1" if spec.local else t.address.rsplit(":", 1)[0] for t in ctx.getTaskInfos()]
        token = min(ctx.allGather(str(ctx.taskAttemptId())), key=int)
        if partition == 0:
            _put(spec, ATTEMPT, token, {"hosts": hosts})
        ctx.barrier()
        attempt = int(_get(spec, ATTEMPT_NO, token))
        if attempt == ABORT:
            raise WorkerFailed(f"training attempts exhausted (max_attempts={spec.training['max_attempts']})")
        slot = assign_ranks(hosts)[partition]
        task = TaskInfo(slot.rank, slot.size, slot.local_rank, partition, attempt, token, hosts[partition])
        env = _base_env(spec)
        if spec.backend == "horovod":
            env.update(horovod_env(spec, slot))
        else:
            port = _free_port()
            addresses = ctx.allGather(json.dumps([slot.rank, f"{task.host}:{port}"]))
            workers = [a for _, a in sorted(json.loads(x) for x in addresses)]
            env["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers},
                                           "task": {"type": "worker", "index": slot.rank}})
        gpus = ctx.resources().get("gpu") if spec.training["gpus_per_worker"] > 0 else None
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus.addresses) if gpus else ""
        yield _run_training_process(spec, task, env)

    return run


def horovod_env(spec: WorkerSpec, slot: Any) -> dict[str, str]:
    """The variables Horovod's gloo launcher sets per rank (horovod/runner/gloo_run.py), for this slot."""
    iface = spec.iface or ("lo" if spec.local else _iface_of(slot.hostname))
    return {
        "HOROVOD_GLOO_RENDEZVOUS_ADDR": spec.control_host,
        "HOROVOD_GLOO_RENDEZVOUS_PORT": str(spec.control_port),
        "HOROVOD_CONTROLLER": "gloo",
        "HOROVOD_CPU_OPERATIONS": "gloo",
        "HOROVOD_GLOO_IFACE": iface,
        "NCCL_SOCKET_IFNAME": iface,
        "HOROVOD_GLOO_TIMEOUT_SECONDS": str(spec.training["horovod"]["gloo_timeout_s"]),
        "HOROVOD_HOSTNAME": slot.hostname,
        "HOROVOD_RANK": str(slot.rank),
        "HOROVOD_SIZE": str(slot.size),
        "HOROVOD_LOCAL_RANK": str(slot.local_rank),
        "HOROVOD_LOCAL_SIZE": str(slot.local_size),
        "HOROVOD_CROSS_RANK": str(slot.cross_rank),
        "HOROVOD_CROSS_SIZE": str(slot.cross_size),
    }


def _base_env(spec: WorkerSpec) -> dict[str, str]:
    threads = str(spec.training["threads_per_worker"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOROVOD_", "TF_CONFIG"))}
    env.update({"PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "PYTHONUNBUFFERED": "1",
                "OMP_NUM_THREADS": threads, "TF_NUM_INTRAOP_THREADS": threads,
                "TF_NUM_INTEROP_THREADS": threads})
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _iface_of(host: str) -> str:
    """The network interface that holds `host`'s IPv4 address (gloo binds to it)."""
    import psutil

    ip = socket.gethostbyname(host)
    for iface, addrs in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == ip for a in addrs):
            return iface
    raise WorkerFailed(f"no network interface holds {host} ({ip}); set training.horovod.iface")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _put(spec: WorkerSpec, scope: str, key: str, value: Any) -> None:
    from horovod.runner.http.http_client import put_data_into_kvstore

    put_data_into_kvstore(spec.control_host, spec.control_port, scope, key, value)


def _get(spec: WorkerSpec, scope: str, key: str) -> Any:
    from horovod.runner.http.http_client import read_data_from_kvstore

    return read_data_from_kvstore(spec.control_host, spec.control_port, scope, key)


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the task's Python worker dies (Spark killed the task)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def _run_training_process(spec: WorkerSpec, task: TaskInfo, env: dict[str, str]) -> WorkerResult:
    """Run `train_worker` in a fresh process; return its result or raise WorkerFailed with its traceback."""
    workdir = Path(tempfile.mkdtemp(prefix=f"train-rank{task.rank}-"))
    (workdir / "task.pkl").write_bytes(cloudpickle.dumps((spec, task)))
    log_path = workdir / "worker.log"
    proc = None
    started = time.perf_counter()
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "pipelines.training.remote", str(workdir)], env=env,
                                    stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
            code = proc.wait()
        result_path = workdir / "result.pkl"
        if code == 0 and result_path.exists():
            result: WorkerResult = cloudpickle.loads(result_path.read_bytes())
            result.seconds["process"] = time.perf_counter() - started
            return result
        error = workdir / "error.txt"
        detail = error.read_text() if error.exists() else _tail(log_path)
        message = (f"rank {task.rank} (barrier task {task.partition}, attempt {task.attempt}, host {task.host}) "
                   f"failed with exit code {code}:\n{detail}")
        with contextlib.suppress(Exception):
            _put(spec, ERROR, f"{task.token}-{task.rank}", message)
        raise WorkerFailed(message)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def _tail(path: Path) -> str:
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join(lines[-LOG_TAIL_LINES:]) or "(no output)"


# ---- the training process --------------------------------------------------------------------------------------
def main(argv: list[str]) -> int:
    """Entry of the training process: read the task, train, write result.pkl (or error.txt and exit 1)."""
    workdir = Path(argv[0])
    spec, task = cloudpickle.loads((workdir / "task.pkl").read_bytes())
    try:
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
    from pipelines.training.model import build_network, loss, make_optimizer, metrics, weights_checksum

    conf = spec.training
    phases: dict[str, float] = {}
    mark = time.perf_counter()
    tf.config.threading.set_intra_op_parallelism_threads(conf["threads_per_worker"])
    tf.config.threading.set_inter_op_parallelism_threads(conf["threads_per_worker"])
    dist = HorovodBackend() if spec.backend == "horovod" else MwmsBackend(task, conf)
    rank, size = dist.rank, dist.size
    tf.keras.utils.set_random_seed(conf["seed"])

    opt_conf = conf["optimizer"]
    lr = opt_conf["learning_rate"] * (size if opt_conf["scale_by_workers"] else 1)
    with dist.scope():
        model = build_network(conf["network"], spec.vector_size, spec.num_classes, spec.input_shape)
        optimizer = dist.wrap(make_optimizer(opt_conf, lr))
        model.compile(optimizer=optimizer, loss=loss(spec.num_classes), metrics=metrics(spec.num_classes))
        ckpt = checkpoints.load_latest(spec.checkpoint_dir)
        if ckpt is None and spec.resume_from:
            ckpt = checkpoints.load_latest(spec.resume_from)
            if rank == 0 and ckpt is not None:
                _copy_best(spec.resume_from, spec.checkpoint_dir)
        if ckpt is not None:
            model.set_weights(ckpt.weights)
            optimizer._create_all_weights(model.trainable_variables)  # slots must exist before their state
            optimizer.set_weights(ckpt.optimizer)
    initial_epoch = ckpt.epoch + 1 if ckpt else 0
    history: list[dict[str, float]] = list(ckpt.meta.get("history", [])) if ckpt else []
    es = ResumableEarlyStopping(ckpt.meta.get("early_stopping") if ckpt else None, **_es_args(conf))
    timer = EpochTimer()
    report = functools.partial(_put, spec, PROGRESS, str(rank)) if rank == 0 else None
    callbacks = [*dist.callbacks(lr, conf, spec.steps_per_epoch), timer,
                 FaultInjection(conf["fault"], rank, task.attempt, dist.sync), es,
                 EpochRecorder(history, es, spec.checkpoint_dir if rank == 0 else None,
                               conf["keep_checkpoints"], task.attempt, report)]
    batch = conf["batch_size"]
    epochs = conf["epochs"]
    reader = {"batch_size": batch, "cur_shard": rank, "shard_count": size, "num_epochs": None,
              "workers_count": conf["data"]["reader_threads"], "seed": conf["seed"] + rank,
              "shuffling_queue_capacity": conf["data"]["shuffle_buffer"] or None,
              **({"transform_spec": image_transform(spec.input_shape)} if spec.input_shape else {})}
    val_reader = {**reader, "shuffling_queue_capacity": None}
    with spec.train_data.make_tf_dataset(**reader) as train_ds, \
            spec.val_data.make_tf_dataset(**val_reader) as val_ds:
        train_in = dist.dataset(_as_xy(train_ds, spec, spec.class_weight))
        val_in = dist.dataset(_as_xy(val_ds, spec, None))
        phases["setup"], mark = time.perf_counter() - mark, time.perf_counter()
        if initial_epoch < epochs:
            model.fit(train_in, epochs=epochs, initial_epoch=initial_epoch, steps_per_epoch=spec.steps_per_epoch,
                      validation_data=val_in, validation_steps=spec.validation_steps, callbacks=callbacks,
                      verbose=0)
        phases["fit"], mark = time.perf_counter() - mark, time.perf_counter()
    phases["close_readers"] = time.perf_counter() - mark
    weights = model.get_weights()
    best = checkpoints.load_best(spec.checkpoint_dir) if rank == 0 else None
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


def _as_xy(ds: Any, spec: WorkerSpec, class_weight: dict[int, float] | None) -> Any:
    """Petastorm batches (namedtuples) -> (features, label, weight) float32 tensors.

    features: [batch, vector_size], or [batch, *input_shape] for images. label: [batch, 1] floats for two
    classes (sigmoid), [batch] class ids for more (softmax). Class weights travel as per-row sample weights
    (what Keras' class_weight does), which also works for tf-mwms' distributed datasets.
    """
    import tensorflow as tf

    shape = (-1, *spec.input_shape) if spec.input_shape else (-1, spec.vector_size)
    weights = tf.constant([(class_weight or {}).get(k, 1.0) for k in range(spec.num_classes)], tf.float32)

    def to_xyw(b: Any) -> tuple[Any, Any, Any]:
        x = tf.reshape(tf.cast(b.features, tf.float32), shape)
        ids = tf.reshape(tf.cast(b.label, tf.int32), (-1,))
        y = tf.reshape(tf.cast(ids, tf.float32), (-1, 1)) if spec.num_classes == 2 else ids
        return x, y, tf.gather(weights, ids)

    return ds.map(to_xyw, num_parallel_calls=1)


def _es_args(conf: dict[str, Any]) -> dict[str, Any]:
    es = conf["early_stopping"]
    return {"monitor": es["monitor"], "patience": es["patience"], "min_delta": es["min_delta"],
            "mode": "min" if es["monitor"] == "val_loss" else "max"}


def _copy_best(src: str, dst: str) -> None:
    best = f"{src.rstrip('/')}/{checkpoints.BEST}"
    if files.exists(best):
        files.write_atomic(f"{dst.rstrip('/')}/{checkpoints.BEST}", files.read_bytes(best))


# ---- distribution backends (inside the training process) -------------------------------------------------------
class HorovodBackend:
    """hvd.init() from the environment the barrier task set; DistributedOptimizer and Horovod's callbacks."""

    def __init__(self) -> None:
        import horovod.tensorflow.keras as hvd

        hvd.init()
        self.hvd = hvd
        self.rank, self.size = hvd.rank(), hvd.size()

    def scope(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def wrap(self, optimizer: Any) -> Any:
        return self.hvd.DistributedOptimizer(optimizer)

    def dataset(self, ds: Any) -> Any:
        return ds

    def callbacks(self, lr: float, conf: dict[str, Any], steps_per_epoch: int) -> list[Any]:
        """Broadcast rank 0's state, average epoch metrics over ranks, warm the learning rate up to lr."""
        hvd = self.hvd
        out = [hvd.callbacks.BroadcastGlobalVariablesCallback(0), hvd.callbacks.MetricAverageCallback()]
        warmup = conf["optimizer"]["warmup_epochs"]
        if warmup > 0 and self.size > 1:
            out.append(hvd.callbacks.LearningRateWarmupCallback(
                initial_lr=lr, warmup_epochs=warmup, steps_per_epoch=steps_per_epoch, verbose=0))
        return out

    def sync(self) -> None:
        import tensorflow as tf

        self.hvd.allreduce(tf.constant(0.0), name="fault_sync")

    def shutdown(self) -> None:
        self.hvd.shutdown()


class MwmsBackend:
    """tf.distribute.MultiWorkerMirroredStrategy over the TF_CONFIG the barrier task built (ring all-reduce)."""

    def __init__(self, task: TaskInfo, conf: dict[str, Any]) -> None:
        import tensorflow as tf

        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING,
            timeout_seconds=float(conf["horovod"]["gloo_timeout_s"]))
        self.strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        self.rank, self.size = task.rank, task.size

    def scope(self) -> contextlib.AbstractContextManager[Any]:
        return self.strategy.scope()

    def wrap(self, optimizer: Any) -> Any:
        return optimizer

    def dataset(self, ds: Any) -> Any:
        """Each worker already reads its own Petastorm shard: distribute it as is, no auto-sharding."""
        return self.strategy.distribute_datasets_from_function(lambda _ctx: ds)

    def callbacks(self, lr: float, conf: dict[str, Any], steps_per_epoch: int) -> list[Any]:
        from pipelines.training.callbacks import LinearWarmup

        warmup = conf["optimizer"]["warmup_epochs"]
        return [LinearWarmup(lr, self.size, warmup, steps_per_epoch)] if warmup > 0 and self.size > 1 else []

    def sync(self) -> None:
        """No barrier outside the strategy's collectives; fault injection does not wait here."""

    def shutdown(self) -> None:
        """The strategy has nothing to release; the process exits after writing its result."""


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown: TensorFlow/gRPC threads can hang it
