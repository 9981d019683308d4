"""Network exposure and authentication of the training control plane in env local, with real trainings.

Every TCP socket listening in the driver's process tree (this test process is the driver of the shared local
session: its JVM, Python workers, the training processes and what they open, the driver's control server) binds
loopback, during a real two-rank training of each backend (Horovod over gloo, tf-mwms) and during scoring through
mlflow.pyfunc.spark_udf (pipelines.stages.score.batch). Listeners are sampled with psutil every 0.2 s. The tf-mwms run
is also the check that that backend trains behind the same launcher.

While each training runs (from rank 0's start report on), forged requests go to every port the tree listens on: a
PUT of a crafted pickle (which would create a file if unpickled) to each control scope and to a gloo rendezvous
scope, an unsigned GET, a PUT with a wrong signature, and replays of real signed requests of the ranks (recorded by
a spy on the driver's verifier as it accepts them, and re-sent byte for byte). The training must finish, the files
must never exist, the driver must answer 403 and log each refusal, and the job's secret must appear in no log line,
command line or environment of the training processes.
"""

from __future__ import annotations

import base64
import os
import pickle
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipelines.core.config import Config, load_config
from pipelines.core.delta import DeltaStore
from pipelines.flows import get_flow
from pipelines.stages.score.batch import model_udf, resolve_model
from pipelines.stages.train import run_train
from pipelines.training import control
from pipelines.training.driver import ControlChannel
from pipelines.training.remote.task import WORKER_MODULE
from pipelines.training.spec import STARTED
from tests.support.logs import logged
from tests.support.proctree import Listener, TreeWatcher, is_loopback, rank_processes
from tests.test_train import SMALL, fit_only, make_features_run

pytestmark = pytest.mark.slow  # two real trainings (one per backend) and a scoring run

CONTROL_SCOPES = {"progress": "x", "attempt": "x", "error": "x-0", "started": "x"}
RENDEZVOUS_SCOPE = "global"  # one of the scopes of Horovod's gloo rendezvous (global, local_<host>, cross_<n>)


class _Payload:
    """Unpickling this creates the file at `path` (a crafted pickle runs any callable of the receiving process)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return open, (str(self.path), "w")


def _raw(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}", "Connection: close",
            *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _send(ip: str, port: int, request: bytes, timeout: float = 3.0) -> str:
    """Send one raw request; the answer's HTTP status code, or what happened instead."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(ip, ip.removeprefix("::ffff:"))
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(request)
            answer = s.recv(64)
    except OSError as e:
        return f"error: {type(e).__name__}"
    first = answer.split(b"\r\n", 1)[0].decode(errors="replace")
    parts = first.split()
    if first.startswith("HTTP/") and len(parts) > 1:
        return parts[1]
    return f"not http: {first[:20]!r}" if answer else "closed"


def forged_requests(payloads: Path) -> dict[str, bytes]:
    """Name -> raw request: a pickle PUT (base64, the body Horovod's KV client sends) to each control scope and to a
    rendezvous scope, an unsigned GET, a PUT whose signature was made with another key."""
    out = {f"pickle {scope}": _raw("PUT", f"/{scope}/{key}",
                                   base64.b64encode(pickle.dumps(_Payload(payloads / scope))))
           for scope, key in {**CONTROL_SCOPES, RENDEZVOUS_SCOPE: "x"}.items()}
    out["unsigned get"] = _raw("GET", f"/{RENDEZVOUS_SCOPE}/0")
    out["wrong signature"] = _raw("PUT", "/progress/x", b'{"epoch": 0, "attempt": 0}',
                                  {control.NONCE: secrets.token_hex(16), control.SIGNATURE: secrets.token_hex(32)})
    return out


@dataclass
class WatchedTraining:
    """One real training under a TreeWatcher, and what the forger sent while it ran."""

    backend: str
    payloads: Path
    watcher: TreeWatcher
    result: list[Any] | None = None  # the per-rank results
    driver_ports: list[int] = field(default_factory=list)
    secret: bytes = b""
    fired: bool = False
    outcomes: dict[tuple[str, int, str], str] = field(default_factory=dict)  # (ip, port, request) -> answer
    accepted: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)  # signed, from the ranks
    replayed: dict[str, str] = field(default_factory=dict)  # path of the re-sent request -> answer
    warnings: list[str] = field(default_factory=list)  # the driver's WARNING lines
    rank_environ: list[dict[str, str]] = field(default_factory=list)
    private: list[tuple[int, int]] = field(default_factory=list)  # modes of each rank's work folder and task file


def _forge(run: WatchedTraining, started: threading.Event) -> None:
    """Once rank 0 reported its start: replays of real signed requests, then forged requests to every port seen
    listening."""
    if not started.wait(timeout=300):
        return
    run.fired = True
    run.watcher.sample()
    for proc in rank_processes(os.getpid()).values():
        try:
            run.rank_environ.append(proc.environ())
            workdir = Path(proc.cmdline()[-1])
            run.private.append((workdir.stat().st_mode & 0o777, (workdir / "task.pkl").stat().st_mode & 0o777))
        except (psutil.Error, OSError):
            continue
    # The replays first: a short training can end (and its server close) while the sweep below goes on.
    for scope in ("attempt", RENDEZVOUS_SCOPE):  # a task's own request, and one gloo sent through its proxy
        real = next((a for a in run.accepted if a[0] == "PUT" and a[1].startswith(f"/{scope}/")), None)
        if real is not None:
            method, path, headers, body = real
            run.replayed[path] = _send("127.0.0.1", run.driver_ports[-1], _raw(method, path, body, headers))
    targets = sorted({(s.ip, s.port) for s in run.watcher.listeners})
    with ThreadPoolExecutor(16) as pool:
        futures = {(ip, port, name): pool.submit(_send, ip, port, raw)
                   for ip, port in targets for name, raw in forged_requests(run.payloads).items()}
    run.outcomes = {key: f.result() for key, f in futures.items()}


def watched_training(backend: str, payloads: Path, train: Callable[[], Any]) -> WatchedTraining:
    """Run `train` while the tree is watched and the forger works; spies record the driver's port, its secret, the
    start report and every signed request it accepts (their real methods do the work)."""
    payloads.mkdir()
    run = WatchedTraining(backend, payloads, TreeWatcher(os.getpid(), interval=0.2))
    started = threading.Event()
    real_start, real_on_message, real_check = ControlChannel.start, ControlChannel.on_message, control.Verifier.check

    def start(self: ControlChannel) -> int:
        port = real_start(self)
        run.driver_ports.append(port)
        run.secret = self.secret
        return port

    def on_message(self: ControlChannel, scope: str, key: str, value: Any) -> Any:
        if scope == STARTED:
            started.set()
        return real_on_message(self, scope, key, value)

    def check(self: control.Verifier, method: str, path: str, nonce: str | None, signature: str | None,
              body: bytes) -> None:
        real_check(self, method, path, nonce, signature, body)
        run.accepted.append((method, path, {control.NONCE: str(nonce), control.SIGNATURE: str(signature)}, body))

    forger = threading.Thread(target=_forge, args=(run, started), daemon=True)
    with pytest.MonkeyPatch.context() as mp, logged() as warnings:
        mp.setattr(ControlChannel, "start", start)
        mp.setattr(ControlChannel, "on_message", on_message)
        mp.setattr(control.Verifier, "check", check)
        run.watcher.start()
        forger.start()
        try:
            run.result = train()
        finally:
            started.set()  # a training that never started: the forger still ends
            forger.join(timeout=120)
            run.watcher.stop()
    run.warnings = list(warnings)
    return run


def _cfg(ws: Path, *overrides: str) -> Config:
    return load_config("local", [f"storage.workspace={ws}", *SMALL, "training.epochs=2",
                                 "training.max_steps_per_epoch=4", *overrides])


@pytest.fixture(scope="module")
def features(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DeltaStore]:
    """A workspace with a features run, shared by both trainings (2 epochs of 4 steps)."""
    ws = tmp_path_factory.mktemp("sockets") / "workspace"
    ws.mkdir()
    store = DeltaStore(spark, load_config("local", []).storage.engine)
    make_features_run(spark, _cfg(ws), store, rows=1500)
    return ws, store


@pytest.fixture(scope="module")
def horovod_training(spark: SparkSession, features: tuple[Path, DeltaStore],
                     tmp_path_factory: pytest.TempPathFactory) -> WatchedTraining:
    """The train job (Horovod; it registers the model the scoring test uses)."""
    ws, store = features
    cfg = _cfg(ws)
    return watched_training("horovod", tmp_path_factory.mktemp("payloads-horovod") / "p",
                            lambda: run_train(spark, cfg, store, get_flow(cfg)).workers)


@pytest.fixture(scope="module")
def mwms_training(spark: SparkSession, features: tuple[Path, DeltaStore],
                  tmp_path_factory: pytest.TempPathFactory) -> WatchedTraining:
    """The distributed fit alone, with training.backend=tf-mwms."""
    ws, store = features
    return watched_training("tf-mwms", tmp_path_factory.mktemp("payloads-mwms") / "p",
                            lambda: fit_only(spark, _cfg(ws, "training.backend=tf-mwms"), store, "mwms"))


@pytest.fixture(params=["horovod", "tf-mwms"])
def training(request: pytest.FixtureRequest) -> Iterator[WatchedTraining]:
    yield request.getfixturevalue("horovod_training" if request.param == "horovod" else "mwms_training")


def _exposed(listeners: set[Listener]) -> list[Listener]:
    return sorted((s for s in listeners if not is_loopback(s.ip)), key=lambda s: (s.pid, s.port))


def _ranks(run: WatchedTraining) -> set[int]:
    return {pid for (pid, _), cmd in run.watcher.seen.items() if WORKER_MODULE in cmd}


def _epochs(run: WatchedTraining) -> int:
    return run.result[0].epochs_completed if run.result else 0


def test_training_listens_on_loopback_only(training: WatchedTraining) -> None:
    run = training
    listeners = set(run.watcher.listeners)
    ranks = _ranks(run)
    assert len(ranks) == 2 and _epochs(run) == 2
    assert any(s.pid == os.getpid() for s in listeners), "the driver's own listeners were not seen"
    if run.backend == "horovod":  # gloo listens only while the ranks connect; their connections last the run
        assert ranks & run.watcher.tcp_pids, f"no TCP socket of a Horovod rank (gloo) was seen: {listeners}"
    else:  # TensorFlow's gRPC server in each training process
        assert {s.pid for s in listeners} >= ranks, f"the ranks' gRPC servers were not seen: {listeners}"
    assert _exposed(listeners) == [], f"{run.backend}: listening beyond loopback: {_exposed(listeners)}"


def test_forged_requests_change_nothing_and_are_refused(training: WatchedTraining) -> None:
    run = training
    assert run.fired, "rank 0's start report never came: nothing was forged"
    assert sorted(p.name for p in run.payloads.iterdir()) == [], "a forged pickle was unpickled on the driver"
    assert _epochs(run) == 2, "the training did not finish its epochs"
    driver = {name: answer for (_, port, name), answer in run.outcomes.items() if port in run.driver_ports}
    assert set(driver) == set(forged_requests(run.payloads)), f"the driver's port was not reached: {run.outcomes}"
    assert set(driver.values()) == {"403"}, driver
    accepted = {k: v for k, v in run.outcomes.items() if v.startswith("2")}
    assert accepted == {}, f"forged requests accepted: {accepted}"
    scopes = {path.split("/")[1] for _, path, _, _ in run.accepted}
    assert "attempt" in scopes and (run.backend != "horovod" or RENDEZVOUS_SCOPE in scopes), scopes
    assert len(run.replayed) == (2 if run.backend == "horovod" else 1), run.replayed
    assert set(run.replayed.values()) == {"403"}, run.replayed

    refused = [w for w in run.warnings if "refused" in w]
    for scope in [*CONTROL_SCOPES, RENDEZVOUS_SCOPE]:
        assert any(f"/{scope}/" in w and "unsigned" in w for w in refused), (scope, refused)
    assert any("bad signature" in w for w in refused), refused
    assert sum("replayed" in w for w in refused) == len(run.replayed), refused
    texts = [*run.warnings, *run.watcher.seen.values(), *(v for env in run.rank_environ for v in env.values())]
    assert len(run.rank_environ) == 2 and run.secret
    assert run.private == [(0o700, 0o600)] * 2, "the task file with the secret is readable by others"
    leaked = [t for t in texts for form in (run.secret.hex(), base64.b64encode(run.secret).decode()) if form in t]
    assert leaked == [], "the job's secret is in a log line, command line or environment"


def test_tf_mwms_backend_behind_the_same_launcher(mwms_training: WatchedTraining) -> None:
    results = mwms_training.result or []
    assert [(r.rank, r.size) for r in results] == [(0, 2), (1, 2)]
    assert len({r.weights_sha256 for r in results}) == 1
    assert [h["epoch"] for h in results[0].history] == [0, 1] and "val_auc" in results[0].history[-1]


def test_scoring_listens_on_loopback_only(spark: SparkSession, features: tuple[Path, DeltaStore],
                                          horovod_training: WatchedTraining) -> None:
    ws, store = features
    cfg = _cfg(ws)
    watcher = TreeWatcher(os.getpid(), interval=0.2).start()
    try:
        model = resolve_model(cfg)
        rows = (store.read(cfg.catalog.path("features")).select("features").limit(200)
                .select(model_udf(spark, cfg, model)(F.col("features")).alias("p")).collect())
    finally:
        watcher.stop()
    assert len(rows) == 200 and all(r["p"] is not None for r in rows)
    scoring = watcher.listeners
    jvm = {p.pid for p in psutil.Process().children(recursive=True) if p.name() == "java"}
    assert any(s.pid in jvm for s in scoring), f"the JVM's listeners were not seen: {scoring}"
    assert _exposed(scoring) == [], f"listening beyond loopback during scoring: {_exposed(scoring)}"
