"""Crash recovery of barrier-mode training, with real SIGKILLs of the ranks' training processes, for each framework.

One `python -m jobs.train` subprocess (its own local[2] Spark, two Horovod ranks over gloo or two PyTorch DDP ranks
over gloo, 5 short epochs, one
checkpoint per epoch, gloo timeout 30 s) is killed twice while the test watches its process tree with psutil:
  1. rank 0's training process inside the write of the epoch-1 checkpoint (a failpoint pauses it there with half
     of the file written; the SIGKILL is real): attempt 1 must resume from epoch 0's checkpoint;
  2. rank 1's training process mid-epoch, right after a later checkpoint is complete: attempt 2 must resume from
     that checkpoint.
The job must then finish, and nothing it started may outlive it: no process of its tree, no work folder of the
launcher under its TMPDIR, no temporary checkpoint file.

The order of an epoch's writes is checked on its own, without Spark: a small process drives the real EpochRecorder
and early stopping through two epochs (the second one the best) and is SIGKILLed at each write of the second epoch;
the best weights a resume would take must be those of the epoch its checkpoint names as the best.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import SparkSession

from pipelines.core import failpoints
from pipelines.core.config import REPO_ROOT, load_config
from pipelines.core.delta import DeltaStore
from pipelines.training import checkpoints
from tests.support.proctree import TreeWatcher, rank_processes, tree
from tests.test_train import SMALL, make_features_run

pytestmark = pytest.mark.slow  # one real train job with two kills and three attempts: minutes on 2 cores

GLOO_TIMEOUT_S = 30  # training.horovod.gloo_timeout_s of the job: a rank waiting on a dead peer gives up then
MARGIN_S = 60  # task kill, stage resubmission and a fresh TensorFlow process on a loaded 2-core machine
EPOCHS = 5
# batch 8 over ~1,500 train rows: ~95 steps per epoch, long enough (about a second) to be killed in the middle of
JOB = [*SMALL, f"training.epochs={EPOCHS}", "training.batch_size=8", "training.keep_checkpoints=10",
       f"training.horovod.gloo_timeout_s={GLOO_TIMEOUT_S}", "training.max_attempts=3", "training.timeout_s=420",
       "spark.driver_memory=1g"]


@dataclass
class CrashRun:
    """What the test saw of the job: kills (time, pid, checkpoints complete at that moment), log, watcher."""

    workspace: Path
    tmpdir: Path
    code: int
    log: str
    seconds: float
    watcher: TreeWatcher
    checkpoint_dir: Path
    kills: list[dict] = field(default_factory=list)
    restarts: list[float] = field(default_factory=list)  # seconds from each kill to the next attempt's processes
    partial_at_kill: list[str] = field(default_factory=list)  # temporary checkpoint files while rank 0 paused
    leftover: list[str] = field(default_factory=list)
    alive_after: list[str] = field(default_factory=list)


def _wait(what: str, check, timeout: float, proc: subprocess.Popen):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"the job exited ({proc.returncode}) while waiting for {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _checkpoint_dir(ws: Path) -> Path | None:
    found = [p for p in (ws / "checkpoints").glob("*") if p.is_dir()]
    return found[0] if found else None


@pytest.fixture(scope="module", params=["tensorflow", "pytorch"])
def crash_run(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
              ) -> CrashRun:
    """The job and its two kills, once per training.framework (Horovod ranks, then PyTorch DDP ranks)."""
    base = tmp_path_factory.mktemp(f"crash-{request.param}")
    ws, tmpdir = base / "workspace", base / "tmp"
    point = "checkpoint.write.epoch-0001.npz"
    marker = base / "failpoints" / point
    ws.mkdir()
    tmpdir.mkdir()
    cfg = load_config("local", [f"storage.workspace={ws}", *SMALL])
    make_features_run(spark, cfg, DeltaStore(spark), rows=2000)
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": str(REPO_ROOT),
           failpoints.ENV: point, failpoints.DIR_ENV: str(marker.parent)}
    argv = [sys.executable, "-m", "jobs.train",
            *[f"--set={o}" for o in (*JOB, f"storage.workspace={ws}", f"training.framework={request.param}")]]
    log_path = base / "job.log"
    started = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    watcher = TreeWatcher(proc.pid).start()
    run = CrashRun(ws, tmpdir, -1, "", 0.0, watcher, ws)
    try:
        # 1. rank 0 paused inside the epoch-1 checkpoint write: SIGKILL it there.
        pid = int(_wait("the checkpoint failpoint", lambda: marker.exists() and marker.read_text(), 300, proc))
        ranks = rank_processes(proc.pid)
        assert ranks.get(0) is not None and ranks[0].pid == pid, f"paused pid {pid} is not rank 0 of {ranks}"
        ckpt_dir = _checkpoint_dir(ws)
        assert ckpt_dir is not None
        run.checkpoint_dir = ckpt_dir
        run.partial_at_kill = sorted(p.name for p in ckpt_dir.glob("*.tmp"))
        run.kills.append({"pid": pid, "rank": 0, "complete": checkpoints.list_epochs(str(ckpt_dir))})
        before = {p.pid for p in ranks.values()}
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        # 2. the next attempt's ranks; once a later checkpoint is complete, SIGKILL rank 1 mid-epoch.
        _wait("attempt 1's ranks", lambda: len(rank_processes(proc.pid)) == 2
              and not before & {p.pid for p in rank_processes(proc.pid).values()}, GLOO_TIMEOUT_S + MARGIN_S, proc)
        run.restarts.append(time.monotonic() - killed)
        _wait("a checkpoint written by attempt 1", lambda: max(checkpoints.list_epochs(str(ckpt_dir)), default=-1) >= 2,
              240, proc)
        time.sleep(0.3)  # into the next epoch's steps
        ranks = rank_processes(proc.pid)
        victim = ranks[1]
        run.kills.append({"pid": victim.pid, "rank": 1, "complete": checkpoints.list_epochs(str(ckpt_dir))})
        before = {p.pid for p in ranks.values()}
        os.kill(victim.pid, signal.SIGKILL)
        killed = time.monotonic()
        _wait("attempt 2's ranks", lambda: len(rank_processes(proc.pid)) == 2
              and not before & {p.pid for p in rank_processes(proc.pid).values()}, GLOO_TIMEOUT_S + MARGIN_S, proc)
        run.restarts.append(time.monotonic() - killed)
        # attempt 1's ranks are gone: what is complete now is what attempt 2 must resume from (rank 0 may finish
        # the checkpoint of an epoch whose last step both ranks passed before the kill landed)
        run.kills[-1]["complete_at_restart"] = checkpoints.list_epochs(str(ckpt_dir))
        run.code = proc.wait(timeout=400)
    finally:
        if proc.poll() is None:
            for p in reversed(tree(proc.pid)):
                p.kill()
            proc.wait()
        run.seconds = time.monotonic() - started
        watcher.stop()
    run.log = log_path.read_text(errors="replace")
    run.alive_after = watcher.wait_gone(20)
    # the driver's own TensorFlow (evaluation, the pyfunc check) starts after the last rank exits: what it leaves is
    # not the training processes'
    fit_end = max(t for key, t in watcher.last_seen.items() if "pipelines.training.remote.worker" in watcher.seen[key])
    run.leftover = sorted(p.name for p in tmpdir.iterdir() if p.name.startswith("train-rank")
                          or (p.name.startswith("__autograph_generated_file") and p.stat().st_mtime <= fit_end + 1))
    return run


def _attempt_starts(log: str) -> dict[int, int]:
    """attempt -> the epoch it started at, from the driver's log lines."""
    return {int(a): int(e) for a, e in re.findall(r"train: attempt (\d+) starts at epoch (\d+)", log)}


def test_sigkilled_rank_resumes_from_last_checkpoint(crash_run: CrashRun) -> None:
    run = crash_run
    assert run.code == 0, run.log[-4000:]
    kill = run.kills[1]
    assert kill["rank"] == 1 and kill["complete"], kill
    resumable = max(kill["complete_at_restart"])
    assert set(kill["complete"]) <= set(kill["complete_at_restart"]) and resumable <= max(kill["complete"]) + 1, kill
    assert _attempt_starts(run.log).get(2) == resumable + 1, (kill, _attempt_starts(run.log))
    assert run.restarts[1] < GLOO_TIMEOUT_S + MARGIN_S
    client = MlflowClient(f"sqlite:///{run.workspace}/mlflow.db")
    train = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.job = 'train'")
    assert len(train) == 1 and train[0].info.status == "FINISHED"
    metrics = train[0].data.metrics
    assert metrics["stage_attempts"] == 3 and metrics["initial_epoch"] == resumable + 1
    assert metrics["epochs_completed"] == EPOCHS
    cmds = list(run.watcher.seen.values())  # the watcher saw the whole tree, so an empty list below means something
    assert any(c.split(" ", 1)[0].endswith("java") for c in cmds)
    assert sum("pipelines.training.remote.worker" in c for c in cmds) >= 6  # 2 ranks x 3 attempts
    assert run.alive_after == [], f"processes outlived the job: {run.alive_after}"
    assert run.leftover == [], f"{len(run.leftover)} files of the training processes left in TMPDIR: {run.leftover[:5]}"


def test_kill_inside_checkpoint_write_resumes_from_previous(crash_run: CrashRun) -> None:
    run = crash_run
    assert run.code == 0, run.log[-4000:]
    kill = run.kills[0]
    assert kill["complete"] == [0], kill
    assert any(n.startswith("epoch-0001.npz") for n in run.partial_at_kill), run.partial_at_kill
    assert _attempt_starts(run.log).get(1) == 1, _attempt_starts(run.log)
    names = sorted(p.name for p in run.checkpoint_dir.iterdir())
    assert [n for n in names if n.endswith(".tmp")] == [], f"half-written checkpoint files left: {names}"
    epochs = checkpoints.list_epochs(str(run.checkpoint_dir))
    assert epochs == list(range(EPOCHS)), names
    for epoch in epochs:  # every published checkpoint reads back whole
        path = run.checkpoint_dir / f"epoch-{epoch:04d}.npz"
        with np.load(path, allow_pickle=False) as data:
            assert int(json.loads(str(data["meta"]))["epoch"]) == epoch


# Two epochs through the real callbacks (early stopping first, as in model.fit); the weights of epoch e are all e + 1,
# and epoch 1 improves val_loss, so its checkpoint names it as the best. The failpoint is armed for epoch 1 only.
RECORDER = """
import os, sys
import numpy as np
import tensorflow as tf
from pipelines.training.callbacks import EpochRecorder, ResumableEarlyStopping

folder, point, failpoint_env = sys.argv[1:4]
model = tf.keras.Sequential([tf.keras.layers.Dense(2, input_shape=(3,)), tf.keras.layers.Dense(1)])
model.compile(optimizer=tf.keras.optimizers.legacy.Adam(), loss="mse")
es = ResumableEarlyStopping(None, monitor="val_loss", mode="min", patience=10)
recorder = EpochRecorder([], es, folder, 10, 0, None)
for callback in (es, recorder):
    callback.set_model(model)
es.on_train_begin()
for epoch, val_loss in enumerate([1.0, 0.5]):
    if epoch == 1:
        os.environ[failpoint_env] = point
    model.set_weights([np.full(w.shape, epoch + 1, w.dtype) for w in model.get_weights()])
    logs = {"loss": val_loss, "val_loss": val_loss}
    es.on_epoch_end(epoch, logs)
    recorder.on_epoch_end(epoch, logs)
print("DONE", flush=True)
"""


@pytest.mark.parametrize("name", ["epoch-0001.npz", "epoch-0001.npz.done", "best.npz"])
def test_kill_between_an_epochs_writes_keeps_its_best_weights(tmp_path: Path, name: str) -> None:
    """SIGKILL while epoch 1 (an improvement) is being saved: whatever is complete afterwards agrees with itself:
    the best weights a resume takes are those of the epoch the newest complete checkpoint names as the best."""
    folder, marks = tmp_path / "ckpt", tmp_path / "failpoints"
    point = f"checkpoint.write.{name}"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), failpoints.DIR_ENV: str(marks)}
    proc = subprocess.Popen([sys.executable, "-c", RECORDER, str(folder), point, failpoints.ENV], cwd=REPO_ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    marker = marks / point
    deadline = time.monotonic() + 120
    while proc.poll() is None and not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    out = proc.communicate(timeout=60)[0].decode(errors="replace")
    assert killed or (proc.returncode == 0 and "DONE" in out), out[-3000:]
    if name.startswith("epoch-"):  # the epoch's own file and marker are written on every code path
        assert killed and int(marker.read_text()) == proc.pid, out[-3000:]

    ckpt = checkpoints.load_latest(str(folder))
    assert ckpt is not None, sorted(p.name for p in folder.iterdir())
    named = ckpt.meta["early_stopping"]["best_epoch"]
    best = checkpoints.load_best(str(folder))
    assert best is not None, f"checkpoint of epoch {ckpt.epoch} names epoch {named} as the best; no best weights"
    assert best[0] == named, (f"killed at {point}: the checkpoint of epoch {ckpt.epoch} names epoch {named} as the "
                              f"best, but the best weights a resume takes are epoch {best[0]}'s")
    assert all(np.all(w == named + 1) for w in best[1]), f"best weights are not epoch {named}'s"
