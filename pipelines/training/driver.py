"""Driver side: launch N training workers as one Spark barrier stage and collect their results.

A `Launcher` runs a WorkerSpec and returns one WorkerResult per rank. Both backends share the launch:
  - a KV server on the driver (Horovod's gloo RendezvousServer) that is also the control channel: the tasks of
    each stage attempt register there (a retried attempt resets the rendezvous), rank 0 reports where the attempt
    starts and every epoch, and a failing rank reports its traceback before its task raises;
  - the barrier stage `parallelize(range(N), N).barrier().mapPartitions(barrier_task(spec))`, followed by a
    shuffle so the barrier stage is a ShuffleMapStage: Spark retries a failed one as a new stage attempt
    (spark.stage.maxConsecutiveAttempts, 4 by default), whereas a failed barrier ResultStage fails the job;
  - a job group with a timer: after training.timeout_s the driver cancels the job group, which kills the tasks
    (and with them the training processes);
  - with gpus_per_worker > 0, a stage-level ResourceProfile asking for that many GPUs per task.
HorovodLauncher additionally serves the gloo rendezvous; TfMwmsLauncher's workers meet through TF_CONFIG.

The KV server authenticates every request, rendezvous scopes included (pipelines.training.control: an HMAC with a
secret made per launch, replays refused, answers signed) and never unpickles what it receives (JSON messages;
rendezvous values are stored as opaque bytes). It listens on 127.0.0.1 in local mode; on a cluster on
training.horovod.bind_address, else spark.driver.bindAddress, else every interface, since the ranks run on other
hosts: what reaches it from the network without the job's secret is refused (403) and logged.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from horovod.runner.http.http_server import RendezvousHandler, RendezvousHTTPServer, RendezvousServer
from horovod.runner.util.threads import in_thread
from pyspark.sql import SparkSession

from pipelines.core.config import TrainingConf
from pipelines.core.logs import LOG
from pipelines.training import control
from pipelines.training.remote.task import barrier_task, sweep_workdirs
from pipelines.training.spec import (
    ABORT,
    ATTEMPT,
    ATTEMPT_NO,
    CONTROL_SCOPES,
    PROGRESS,
    STARTED,
    WorkerResult,
    WorkerSpec,
    assign_ranks,
)


class TrainingFailed(RuntimeError):
    """The barrier stage failed; the message names the failing rank and carries its traceback."""

    def __init__(self, message: str, rank: int | None = None, attempt: int | None = None) -> None:
        super().__init__(message)
        self.rank, self.attempt = rank, attempt


class TrainingTimeout(TrainingFailed):
    """Training did not finish within training.timeout_s; the driver cancelled the job group."""


class TrainingStopped(TrainingFailed):
    """The driver's `on_epoch` callback asked to stop (a pruned search trial); the job group was cancelled."""

    def __init__(self, message: str, progress: dict[str, Any] | None) -> None:
        super().__init__(message)
        self.progress = progress


class Launcher(Protocol):
    """Runs one distributed training and returns the per-rank results, ordered by rank."""

    backend: str

    def run(self, spec: WorkerSpec, on_epoch: Callable[[dict[str, Any]], bool] | None = None
            ) -> list[WorkerResult]: ...


def steps_per_epoch(rows: int, batch_size: int, workers: int, cap: int | None = None) -> int:
    """Steps every rank runs per epoch: one pass over `rows` split over the workers (at least 1, at most `cap`).

    Computed once on the driver and given to every rank: with Petastorm reading num_epochs=None, all ranks run
    the same number of steps whatever the size of their shard, so no rank waits for an all-reduce that never
    comes.
    """
    steps = max(1, rows // (batch_size * workers))
    return min(steps, cap) if cap else steps


class BoundRendezvousServer(RendezvousServer):
    """Horovod's gloo rendezvous server listening on one address (Horovod's own binds every interface), on a port
    the OS picks; `stop` also closes the listening socket (Horovod's only ends the serving loop)."""

    def __init__(self, host: str, verbose: int = 0) -> None:
        super().__init__(verbose=verbose)
        self.host = host

    def start(self, handler_cls: type = RendezvousHandler) -> int:
        self._httpd = RendezvousHTTPServer((self.host, 0), handler_cls, self._verbose)
        self._listen_thread = in_thread(target=self._httpd.serve_forever)
        return int(self._httpd.server_address[1])

    def stop(self) -> None:
        super().stop()
        self._httpd.server_close()


class SignedHandler(RendezvousHandler):
    """Horovod's rendezvous handler behind the control channel's checks: every request must be signed with the
    launch's secret (else 403, logged as a WARNING naming the request and its peer); values of the control scopes
    are JSON messages for the channel, those of the rendezvous scopes opaque bytes; every answer is signed."""

    channel: ControlChannel
    _nonce: str | None = None

    def do_GET(self) -> None:
        request = self._authenticated()
        if request is not None:
            value = self._get_value(request[0], request[1])
            self._answer(404) if value is None else self._answer(200, value)

    def do_PUT(self) -> None:
        request = self._authenticated()
        if request is None:
            return
        scope, key, body = request
        if scope not in CONTROL_SCOPES:
            self._put_value(scope, key, body)
            self._answer(200)
            return
        try:
            message = control.decode(scope, body)
        except ValueError as e:
            LOG.warning("train: control channel: bad %s message from %s: %s", scope, self._peer(), e)
            self._answer(400)
            return
        answer = self.channel.on_message(scope, key, message)
        if answer is not None:
            self._put_value(ATTEMPT_NO, key, control.encode(answer))
        self._answer(200)

    def do_DELETE(self) -> None:
        if self._authenticated() is not None:
            super().do_DELETE()  # answers through send_status_code

    def send_status_code(self, status_code: int) -> None:
        self._answer(status_code)

    def _authenticated(self) -> tuple[str, str, bytes] | None:
        """(scope, key, body) of a signed, new request; else answer it (400, 403, 408, 413) and return None."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= control.MAX_BODY:
            return self._refuse(413 if length > 0 else 400, f"body length {self.headers.get('Content-Length')!r}")
        try:
            body = self.rfile.read(length) if length else b""
        except TimeoutError:
            return self._refuse(408, "body not received")
        try:
            self.channel.verifier.check(self.command, self.path, self.headers.get(control.NONCE),
                                        self.headers.get(control.SIGNATURE), body)
        except control.Refused as e:
            return self._refuse(403, str(e))
        self._nonce = self.headers[control.NONCE]
        parts = self.path.split("/")
        if len(parts) != 3 or parts[0] or not parts[1]:
            self._answer(400)
            return None
        return parts[1], parts[2], body

    def _refuse(self, status: int, reason: str) -> None:
        LOG.warning("train: control channel refused %s %r from %s (%s)", self.command, self.path[:200], self._peer(),
                    reason)
        self._answer(status)
        return None

    def _peer(self) -> str:
        return f"{self.client_address[0]}:{self.client_address[1]}"

    def _answer(self, status: int, body: bytes = b"") -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if self._nonce is not None:
            self.send_header(control.SIGNATURE, self.channel.verifier.sign_answer(self._nonce, status, body))
        with contextlib.suppress(ConnectionError):  # a peer that left without reading its answer
            self.end_headers()
            self.wfile.write(body)


@dataclass
class _Report:
    at: float
    token: str
    rank: int
    text: str


@dataclass
class ControlChannel:
    """The driver's KV server: Horovod rendezvous scopes plus this launcher's attempt/progress/error scopes."""

    num_workers: int
    max_attempts: int
    epochs: int
    reset_rendezvous: bool
    cancel: Any  # callable(reason)
    bind_host: str = "127.0.0.1"
    on_epoch: Callable[[dict[str, Any]], bool] | None = None  # True: stop the training (cancel "stopped")
    attempts: dict[str, int] = field(default_factory=dict)
    errors: list[_Report] = field(default_factory=list)
    last_progress: dict[str, Any] | None = None
    secret: bytes = field(default_factory=control.new_secret, repr=False)  # this launch's; the tasks get it in spec
    verifier: control.Verifier = field(init=False, repr=False)
    _server: BoundRendezvousServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.verifier = control.Verifier(self.secret)

    def start(self) -> int:
        self._server = BoundRendezvousServer(self.bind_host)
        return self._server.start(self._handler())

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()

    def _handler(self) -> type:
        return type("ControlHandler", (SignedHandler,), {"channel": self})

    def on_message(self, scope: str, key: str, value: Any) -> int | None:
        """Handle one control message; for an attempt registration return the attempt number (or ABORT)."""
        with self._lock:
            if scope == ATTEMPT:
                return self._register(key, value["hosts"])
            if scope == STARTED:
                where = (f"checkpoint of epoch {value['checkpoint_epoch']}" if value["checkpoint_epoch"] is not None
                         else "scratch")
                LOG.info("train: attempt %d starts at epoch %d (from %s)", value["attempt"], value["initial_epoch"],
                         where)
                return None
            if scope == PROGRESS:
                self.last_progress = value
                shown = {k: round(v, 4) for k, v in value.items()
                         if k in ("loss", "auc", "rmse", "val_loss", "val_auc", "val_accuracy", "val_rmse", "lr",
                                  "epoch_train_seconds")}
                LOG.info("train: epoch %d/%d (attempt %d) %s", value["epoch"] + 1, self.epochs,
                         value["attempt"], " ".join(f"{k}={v}" for k, v in shown.items()))
                if self.on_epoch is not None and self.on_epoch(value):
                    threading.Thread(target=self.cancel, args=("stopped",), daemon=True).start()
                return None
            token, _, rank = key.rpartition("-")
            self.errors.append(_Report(time.time(), token, int(rank), value))
            attempt = self.attempts.get(token, 0)
            LOG.error("train: rank %s failed in attempt %d", rank, attempt)
            if attempt + 1 >= self.max_attempts:
                threading.Thread(target=self.cancel, args=("failed",), daemon=True).start()
            return None

    def _register(self, token: str, hosts: list[str]) -> int:
        if token not in self.attempts:
            self.attempts[token] = len(self.attempts)
            number = self.attempts[token]
            if number >= self.max_attempts:
                threading.Thread(target=self.cancel, args=("attempts",), daemon=True).start()
                return ABORT
            if self.reset_rendezvous and self._server is not None:
                self._server.init(assign_ranks(hosts))  # fresh scopes: nothing left from a failed attempt
            LOG.info("train: attempt %d started on %s", number, ", ".join(hosts))
        number = self.attempts[token]
        return ABORT if number >= self.max_attempts else number

    def first_error(self) -> _Report | None:
        """The earliest failure report of the latest attempt that reported one (the root cause, not the ranks
        that failed after it)."""
        if not self.errors:
            return None
        latest = max(self.attempts.get(e.token, 0) for e in self.errors)
        return min((e for e in self.errors if self.attempts.get(e.token, 0) == latest), key=lambda e: e.at)


class BarrierLauncher:
    """Launch shared by the backends: control channel, barrier stage, retries, timeout, error collection."""

    backend = "horovod"
    uses_rendezvous = True

    def __init__(self, spark: SparkSession, training: TrainingConf) -> None:
        self.spark = spark
        self.conf = training
        self.local = spark.sparkContext.master.startswith("local")

    def control_host(self) -> str:
        """Address the tasks reach the driver at: 127.0.0.1 locally, spark.driver.host on a cluster."""
        if self.conf.horovod.rendezvous_host:
            return self.conf.horovod.rendezvous_host
        if self.local:
            return "127.0.0.1"
        return self.spark.sparkContext.getConf().get("spark.driver.host") or "127.0.0.1"

    def bind_host(self) -> str:
        """Address the driver's KV server listens on: training.horovod.bind_address; else 127.0.0.1 in local
        mode; on a cluster spark.driver.bindAddress, else every interface (the ranks run on other hosts)."""
        if self.conf.horovod.bind_address:
            return self.conf.horovod.bind_address
        if self.local:
            return "127.0.0.1"
        return self.spark.sparkContext.getConf().get("spark.driver.bindAddress") or "0.0.0.0"

    def run(self, spec: WorkerSpec, on_epoch: Callable[[dict[str, Any]], bool] | None = None
            ) -> list[WorkerResult]:
        """Run the barrier stage to completion (Spark retries included); results ordered by rank. `on_epoch`
        (driver side) sees rank 0's report of every epoch; returning True cancels the stage (TrainingStopped)."""
        sc = self.spark.sparkContext
        n = self.conf.num_workers
        group = f"train-{uuid.uuid4().hex[:8]}"
        cancelled: list[str] = []

        def cancel(reason: str) -> None:
            if not cancelled:
                cancelled.append(reason)
                LOG.error("train: cancelling job group %s (%s)", group, reason)
                sc.cancelJobGroup(group)

        channel = ControlChannel(n, self.conf.max_attempts, self.conf.epochs, self.uses_rendezvous, cancel,
                                 self.bind_host(), on_epoch)
        port = channel.start()
        spec = replace(spec, backend=self.backend, control_host=self.control_host(), control_port=port,
                       local=self.local, iface=self.conf.horovod.iface, secret=channel.secret)
        rdd = sc.parallelize(range(n), n)
        if self.conf.gpus_per_worker > 0:
            rdd = rdd.withResources(self._gpu_profile())
        stage = rdd.barrier().mapPartitions(barrier_task(spec)).repartition(1)
        timer = threading.Timer(self.conf.timeout_s, cancel, ("timeout",))
        timer.daemon = True
        sc.setJobGroup(group, f"{self.backend} training, {n} workers", interruptOnCancel=True)
        started = time.perf_counter()
        timer.start()
        try:
            results = stage.collect()
        except Exception as e:
            raise self._failure(e, channel, cancelled, time.perf_counter() - started) from None
        finally:
            timer.cancel()
            for key in ("spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel"):
                sc.setLocalProperty(key, None)  # type: ignore[arg-type]
            channel.stop()
            if self.local:  # the tasks ran here: folders of tasks Spark killed (the next task sweeps elsewhere)
                sweep_workdirs()
        return sorted(results, key=lambda r: r.rank)

    def _gpu_profile(self) -> Any:
        from pyspark.resource import ResourceProfileBuilder, TaskResourceRequests

        req = TaskResourceRequests().cpus(self.conf.threads_per_worker).resource("gpu", self.conf.gpus_per_worker)
        return ResourceProfileBuilder().require(req).build

    def _failure(self, error: Exception, channel: ControlChannel, cancelled: list[str],
                 seconds: float) -> TrainingFailed:
        """One driver-side exception: the failing rank's own report when there is one, else Spark's message."""
        report = channel.first_error()
        attempts = len(channel.attempts)
        if cancelled and cancelled[0] == "stopped":
            return TrainingStopped(f"training stopped by the driver after {seconds:.0f}s at "
                                   f"{channel.last_progress}", channel.last_progress)
        if cancelled and cancelled[0] == "timeout":
            detail = f"\nlast failure: {report.text}" if report else ""
            return TrainingTimeout(f"training did not finish within training.timeout_s={self.conf.timeout_s}s "
                                   f"({attempts} attempt(s), last progress {channel.last_progress}){detail}")
        if report is not None:
            attempt = channel.attempts.get(report.token, 0)
            return TrainingFailed(f"training failed after {seconds:.0f}s, {attempts} attempt(s): {report.text}",
                                  report.rank, attempt)
        text = str(error)
        m = re.search(r"[Tt]ask (\d+)(?:\.\d+)? in stage", text)
        first = next((ln for ln in text.splitlines() if "Exception" in ln or "Error" in ln), text[:500])
        where = f" in barrier task {m.group(1)}" if m else ""
        return TrainingFailed(f"training failed{where} after {seconds:.0f}s, {attempts} attempt(s): {first}")


class HorovodLauncher(BarrierLauncher):
    """Horovod over gloo: the driver's control channel is also the gloo rendezvous server."""

    backend = "horovod"
    uses_rendezvous = True


class TfMwmsLauncher(BarrierLauncher):
    """TensorFlow MultiWorkerMirroredStrategy in the same barrier tasks; TF_CONFIG from an allGather."""

    backend = "tf-mwms"
    uses_rendezvous = False


class TorchDdpLauncher(BarrierLauncher):
    """PyTorch DistributedDataParallel in the same barrier tasks; the process group meets in the control server
    (a signed store, one scope per attempt, so nothing needs resetting between attempts)."""

    backend = "torch-ddp"
    uses_rendezvous = False


def make_launcher(spark: SparkSession, training: TrainingConf) -> Launcher:
    """The launcher for training.backend."""
    launchers: dict[str, type[BarrierLauncher]] = {"horovod": HorovodLauncher, "tf-mwms": TfMwmsLauncher,
                                                   "torch-ddp": TorchDdpLauncher}
    return launchers[training.backend](spark, training)
