"""The barrier task: what runs inside each Spark barrier task (the executor's Python worker).

`barrier_task(spec)` is the function of the barrier stage. Per task it:
  1. reads its partition and every task's address from BarrierTaskContext;
  2. agrees on an attempt token (allGather of task ids) and lets rank 0 register the attempt with the driver,
     which resets Horovod's rendezvous for a retried stage and answers the attempt number (every request to the
     driver is signed with the launch's secret, which comes in the spec; see pipelines.training.control);
  3. derives its Horovod slot (rank, local rank, ...) from the host assignment, asks the backend for the
     process environment (Horovod's per-rank variables, or TF_CONFIG from an allGather of host:port), and picks
     its GPUs from the task's resources;
  4. starts the training process (`python -m pipelines.training.remote.worker`) with that environment and waits.

The training process is a fresh process per attempt, because TensorFlow's thread pools, CUDA_VISIBLE_DEVICES and
collective ops are fixed at start-up while Spark reuses its Python workers across tasks. It dies with its task
(PR_SET_PDEATHSIG). A failure is reported to the driver (rank and traceback) before the task raises, so the
driver can name the rank that failed.

Each process works in `<tmp>/train-rank<N>-<random>/` (mode 0700: its task file, 0600 since it holds the launch's
secret, its log, result, and its TMPDIR, so what TensorFlow leaves there goes too). The task removes it when the
process ends; a task Spark killed (SIGKILL of the Python worker, when another rank of the barrier stage failed)
cannot, so the folder records its owner's pid and start time and `sweep_workdirs` removes folders whose owner is
gone: every barrier task runs it before it starts, and the driver after the stage in local mode.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle

from pipelines.core.procs import ProcessId
from pipelines.training import control
from pipelines.training.remote.backends import backend_class
from pipelines.training.spec import (
    ABORT,
    ATTEMPT,
    ATTEMPT_NO,
    ERROR,
    WorkerFailed,
    WorkerResult,
    WorkerSpec,
    assign_ranks,
)

LOG_TAIL_LINES = 60
WORKDIR_PREFIX = "train-rank"
OWNER_FILE = "owner"  # "<pid> <start time>" of the task's Python worker that owns the folder
WORKER_MODULE = "pipelines.training.remote.worker"  # `python -m` entry of the training process


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


def put(spec: WorkerSpec, scope: str, key: str, value: Any) -> None:
    """Send a message (JSON, signed) to the driver's control channel (its KV server)."""
    status, _ = control.call(spec.control_host, spec.control_port, spec.secret, "PUT", f"/{scope}/{key}",
                             control.encode(value))
    if status != 200:
        raise RuntimeError(f"the driver's control channel answered {status} to a {scope} message")


def get(spec: WorkerSpec, scope: str, key: str) -> Any:
    """Read the driver's answer (JSON, signed) from its KV server; it is there once the tasks passed a barrier."""
    status, body = control.call(spec.control_host, spec.control_port, spec.secret, "GET", f"/{scope}/{key}")
    if status != 200:
        raise RuntimeError(f"the driver's control channel answered {status} to a read of {scope}/{key}")
    return control.decode(scope, body)


def barrier_task(spec: WorkerSpec) -> Callable[[Iterable[Any]], Iterator[WorkerResult]]:
    """The mapPartitions function of the barrier stage: one call per rank, yields that rank's WorkerResult."""

    def run(_: Iterable[Any]) -> Iterator[WorkerResult]:
        from pyspark import BarrierTaskContext

        ctx = BarrierTaskContext.get()
        partition = ctx.partitionId()
        hosts = ["127.0.0.1" if spec.local else t.address.rsplit(":", 1)[0] for t in ctx.getTaskInfos()]
        token = min(ctx.allGather(str(ctx.taskAttemptId())), key=int)
        if partition == 0:
            put(spec, ATTEMPT, token, {"hosts": hosts})
        ctx.barrier()
        attempt = int(get(spec, ATTEMPT_NO, token))
        if attempt == ABORT:
            raise WorkerFailed(f"training attempts exhausted (max_attempts={spec.training['max_attempts']})")
        slot = assign_ranks(hosts)[partition]
        task = TaskInfo(slot.rank, slot.size, slot.local_rank, partition, attempt, token, hosts[partition])
        sweep_workdirs()
        env = _base_env(spec)
        env.update(backend_class(spec.backend).task_env(spec, slot, task.host, ctx.allGather))
        gpus = ctx.resources().get("gpu") if spec.training["gpus_per_worker"] > 0 else None
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus.addresses) if gpus else ""
        yield _run_training_process(spec, task, env)

    return run


def _base_env(spec: WorkerSpec) -> dict[str, str]:
    threads = str(spec.training["threads_per_worker"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOROVOD_", "TF_CONFIG"))}
    env.update({"PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "PYTHONUNBUFFERED": "1",
                "OMP_NUM_THREADS": threads, "TF_NUM_INTRAOP_THREADS": threads,
                "TF_NUM_INTEROP_THREADS": threads})
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the task's Python worker dies (Spark killed the task)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def _owner() -> str:
    """This process as a work folder's owner record: "<pid> <start time in clock ticks>"."""
    me = ProcessId.current()
    return f"{me.pid} {me.start or ''}"


def _owner_alive(text: str) -> bool:
    """Whether the owner recorded in `text` still runs (pipelines.core.procs: a zombie or a reused pid is dead). A
    record that does not parse (empty, being written, not ours) counts as alive: its folder is left alone."""
    pid, _, start = text.strip().partition(" ")
    try:
        owner = ProcessId(socket.gethostname(), int(pid), start or None)
    except ValueError:
        return True
    return owner.alive()


def sweep_workdirs(root: str | None = None) -> list[str]:
    """Remove training work folders under `root` (the temp dir) whose owning task process is gone; their paths."""
    removed = []
    for d in Path(root or tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*"):
        owner = d / OWNER_FILE
        try:
            alive = _owner_alive(owner.read_text())
        except OSError:  # no owner yet: being created right now, or not ours
            continue
        if not alive:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(str(d))
    return removed


def make_workdir(rank: int, root: str | None = None) -> Path:
    """A fresh 0700 work folder for rank `rank` under `root` (the temp dir), owned by this process, with its tmp/."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{rank}-", dir=root))
    staged = workdir / f"{OWNER_FILE}.new"
    staged.write_text(_owner())
    staged.replace(workdir / OWNER_FILE)  # atomic: a concurrent sweep never reads a half-written owner as dead
    (workdir / "tmp").mkdir()
    return workdir


def _run_training_process(spec: WorkerSpec, task: TaskInfo, env: dict[str, str]) -> WorkerResult:
    """Run the training process; return its result or raise WorkerFailed with its traceback."""
    workdir = make_workdir(task.rank)
    env = {**env, "TMPDIR": str(workdir / "tmp")}
    fd = os.open(workdir / "task.pkl", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # holds the secret
    with os.fdopen(fd, "wb") as f:
        f.write(cloudpickle.dumps((spec, task)))
    log_path = workdir / "worker.log"
    proc = None
    started = time.perf_counter()
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", WORKER_MODULE, str(workdir)], env=env,
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
            put(spec, ERROR, f"{task.token}-{task.rank}", message)
        raise WorkerFailed(message)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def _tail(path: Path) -> str:
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join(lines[-LOG_TAIL_LINES:]) or "(no output)"
