"""Distribution backends behind one small interface, used on both remote sides:

  - in the barrier task, `task_env(spec, slot, host, all_gather)`: the environment the training process gets
    (Horovod's per-rank variables for gloo; TF_CONFIG for MultiWorkerMirroredStrategy, built from an allGather
    of every task's host:port, and the bind shim);
  - in the training process, an instance: rank and size, the strategy scope, the optimizer wrapper, the dataset
    distribution, the callbacks (broadcast, metric averaging, warm-up), a barrier for fault injection, shutdown.

What each listens on: Horovod's gloo rendezvous goes through a signing proxy of the training process on 127.0.0.1
(remote/proxy.py) to the driver; gloo binds the interface `training.horovod.iface` (lo in local mode). TensorFlow's
gRPC server binds the wildcard address with no option to change it, so the tf-mwms training process runs with
the bind shim (bind_address.c, built into the environment by bootstrap.sh, preloaded with LD_PRELOAD): a bind to
the wildcard address binds the task's own host address instead (127.0.0.1 in local mode).

torch-ddp (training.framework pytorch) has no Keras-shaped interface: its training process (torch_worker.py)
drives DistributedDataParallel itself and uses the backend for the process group, `sync` and `shutdown`.

TensorFlow, Horovod's TensorFlow module and torch are imported only in the training process.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from pipelines.training.spec import WorkerFailed, WorkerSpec

BIND_SHIM = "libbind_address.so"  # in <environment>/lib; source: bind_address.c beside this module
BIND_ADDRESS_ENV = "PIPELINE_BIND_ADDRESS"  # the shim's address for wildcard binds (not a secret)


class Backend(Protocol):
    """A started backend inside the training process."""

    rank: int
    size: int

    def scope(self) -> contextlib.AbstractContextManager[Any]: ...

    def wrap(self, optimizer: Any) -> Any: ...

    def dataset(self, ds: Any) -> Any: ...

    def callbacks(self, lr: float, conf: dict[str, Any], steps_per_epoch: int) -> list[Any]: ...

    def sync(self) -> None: ...

    def shutdown(self) -> None: ...


class HorovodBackend:
    """hvd.init() from the environment the barrier task set; DistributedOptimizer and Horovod's callbacks."""

    @staticmethod
    def task_env(spec: WorkerSpec, slot: Any, host: str, all_gather: Callable[[str], list[str]]) -> dict[str, str]:
        """The variables Horovod's gloo launcher sets per rank (horovod/runner/gloo_run.py), for this slot; the
        rendezvous address is set by the training process itself (its signing proxy)."""
        iface = spec.iface or ("lo" if spec.local else _iface_of(slot.hostname))
        timeline = spec.training["horovod"].get("timeline")
        return {**({"HOROVOD_TIMELINE": timeline} if timeline else {}),  # as horovodrun: every rank, rank 0 writes
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

    def __init__(self, spec: WorkerSpec, task: Any) -> None:
        import horovod.tensorflow.keras as hvd

        from pipelines.training.remote.proxy import LOOPBACK, SigningProxy

        self.proxy = SigningProxy(spec.control_host, spec.control_port, spec.secret)
        port = self.proxy.start()
        os.environ.update({"HOROVOD_GLOO_RENDEZVOUS_ADDR": LOOPBACK, "HOROVOD_GLOO_RENDEZVOUS_PORT": str(port)})
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
        self.proxy.stop()


class MwmsBackend:
    """tf.distribute.MultiWorkerMirroredStrategy over the TF_CONFIG the barrier task built (ring all-reduce)."""

    @staticmethod
    def task_env(spec: WorkerSpec, slot: Any, host: str, all_gather: Callable[[str], list[str]]) -> dict[str, str]:
        """TF_CONFIG: every task's host and a free port of its own, ordered by rank (one allGather); the bind shim
        with the task's own address, where TensorFlow's gRPC server then listens."""
        address = socket.gethostbyname(host)
        shim = bind_shim()
        addresses = all_gather(json.dumps([slot.rank, f"{host}:{_free_port(address)}"]))
        workers = [a for _, a in sorted(json.loads(x) for x in addresses)]
        preload = " ".join(p for p in (str(shim), os.environ.get("LD_PRELOAD", "")) if p)
        return {"TF_CONFIG": json.dumps({"cluster": {"worker": workers},
                                         "task": {"type": "worker", "index": slot.rank}}),
                "LD_PRELOAD": preload, BIND_ADDRESS_ENV: address}

    def __init__(self, spec: WorkerSpec, task: Any) -> None:
        import tensorflow as tf

        conf = spec.training
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


class TorchDdpBackend:
    """torch.distributed for DistributedDataParallel: gloo on CPU, nccl when the rank has a GPU. The process group
    meets through the driver's control server (a signed store, remote/torch_worker.SignedStore, one scope per
    attempt) instead of torch's own TCPStore, which authenticates nothing; gloo's pairs bind the interface
    `training.horovod.iface` (lo in local mode), as Horovod's do."""

    @staticmethod
    def task_env(spec: WorkerSpec, slot: Any, host: str, all_gather: Callable[[str], list[str]]) -> dict[str, str]:
        iface = spec.iface or ("lo" if spec.local else _iface_of(slot.hostname))
        return {"GLOO_SOCKET_IFNAME": iface, "NCCL_SOCKET_IFNAME": iface}

    def __init__(self, spec: WorkerSpec, task: Any) -> None:
        from datetime import timedelta

        import torch
        import torch.distributed as dist

        from pipelines.training.remote.torch_worker import SignedStore

        timeout = float(spec.training["horovod"]["gloo_timeout_s"])
        self.device = torch.device("cuda", 0) if (spec.training["gpus_per_worker"] > 0
                                                   and torch.cuda.is_available()) else torch.device("cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # the task's one GPU (CUDA_VISIBLE_DEVICES), for nccl's collectives
        store = SignedStore(spec, f"torch-ddp-{task.attempt}", timeout)
        dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo", store=store, rank=task.rank,
                                world_size=task.size, timeout=timedelta(seconds=timeout))
        self.dist = dist
        self.rank, self.size = dist.get_rank(), dist.get_world_size()

    def sync(self) -> None:
        self.dist.barrier()

    def shutdown(self) -> None:
        self.dist.destroy_process_group()


BACKENDS: dict[str, Any] = {"horovod": HorovodBackend, "tf-mwms": MwmsBackend, "torch-ddp": TorchDdpBackend}


def backend_class(name: str) -> Any:
    """The backend called `name` (training.backend)."""
    return BACKENDS[name]


def start_backend(spec: WorkerSpec, task: Any) -> Backend:
    """Start spec.backend inside the training process (hvd.init(), or the strategy from TF_CONFIG)."""
    return backend_class(spec.backend)(spec, task)


def _iface_of(host: str) -> str:
    """The network interface that holds `host`'s IPv4 address (gloo binds to it)."""
    import psutil

    ip = socket.gethostbyname(host)
    for iface, addrs in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == ip for a in addrs):
            return iface
    raise WorkerFailed(f"no network interface holds {host} ({ip}); set training.horovod.iface")


def _free_port(address: str) -> int:
    """A port free on `address` now (the process binds it moments later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def bind_shim() -> Path:
    """The bind shim bootstrap.sh compiles into the environment (it travels in YARN's packed environment)."""
    path = Path(sys.prefix) / "lib" / BIND_SHIM
    if not path.is_file():
        raise WorkerFailed(f"{path} is missing: ./bootstrap.sh builds it (gcc); tf-mwms needs it to keep TensorFlow's "
                           "gRPC server off the wildcard address")
    return path
