"""The contract between the driver and the barrier tasks: what a worker is given, what it returns, how ranks
are assigned, the names on the driver's control channel, and the error a failed training process raises. Imported
on both sides and by the driver before any training: no TensorFlow here, and Horovod only inside `assign_ranks`."""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from horovod.runner.common.util.hosts import SlotInfo

# Control channel scopes on the driver's KV server (next to Horovod's own rendezvous scopes); values are JSON.
ATTEMPT = "attempt"  # rank 0 registers an attempt: key = attempt token, value = the tasks' hosts
ATTEMPT_NO = "attempt-no"  # the driver answers: key = token, value = attempt number, or ABORT
STARTED = "started"  # rank 0 reports where its attempt starts: key = attempt, value = dict
PROGRESS = "progress"  # a rank reports an epoch: key = rank, value = dict
ERROR = "error"  # a rank reports its failure: key = token-rank, value = traceback text
CONTROL_SCOPES = (ATTEMPT, STARTED, PROGRESS, ERROR)  # what the tasks send; the driver answers in ATTEMPT_NO
ABORT = -1


class WorkerFailed(RuntimeError):
    """A training process ended without a result; the message names the rank and carries its traceback."""


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a training worker needs; pickled into the barrier stage's closure (and so the control channel's
    secret reaches the tasks with the task, never on a command line, in an environment variable or a log)."""

    backend: str  # horovod | tf-mwms
    training: dict[str, Any]  # TrainingConf.model_dump()
    vector_size: int
    steps_per_epoch: int
    validation_steps: int
    class_weight: dict[int, float] | None  # class id -> weight
    train_data: Any  # pipelines.training.data.ParquetCache (picklable: cache URL and file list)
    val_data: Any
    checkpoint_dir: str  # this run's folder; rank 0 writes one checkpoint per epoch
    resume_from: str | None  # another run's checkpoint folder to start from (--resume)
    control_host: str = ""  # the driver's KV server; filled in by the launcher
    control_port: int = 0
    local: bool = True  # Spark local mode: loopback addresses and interface
    iface: str | None = None
    head: str = "binary"  # binary | multiclass | regression: output layer, loss, metrics (heads.py)
    num_classes: int = 2  # multiclass: the softmax's width; binary 2; regression 1
    input_shape: tuple[int, ...] | None = None  # images: Petastorm's TransformSpec reshapes rows to it
    label_scale: tuple[float, float] | None = None  # regression: (mean, std) of the train labels
    secret: bytes = field(default=b"", repr=False)  # signs the control requests; per launch, filled in by the launcher


@dataclass
class WorkerResult:
    """What one rank returns to the driver (the epoch history and weights only from rank 0)."""

    rank: int
    size: int
    partition: int
    attempt: int
    host: str
    initial_epoch: int
    epochs_completed: int
    stopped_early: bool
    weights_sha256: str
    train_seconds: float
    samples: int
    history: list[dict[str, float]] = field(default_factory=list)
    weights: list[Any] | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # process, setup, fit, close_readers


def assign_ranks(hosts: list[str]) -> list[SlotInfo]:
    """Horovod slot of each barrier task, given each task's host in partition order.

    Ranks follow Horovod's own host assignment (ranks on one host are contiguous); the tasks on a host take that
    host's slots in partition order, so driver and tasks compute the same plan independently.
    """
    from horovod.runner.common.util.hosts import HostInfo, get_host_assignments

    counts = Counter(hosts)
    plan = get_host_assignments([HostInfo(h, counts[h]) for h in dict.fromkeys(hosts)], len(hosts))
    free: dict[str, deque[SlotInfo]] = defaultdict(deque)
    for slot in plan:
        free[slot.hostname].append(slot)
    return [free[h].popleft() for h in hosts]
