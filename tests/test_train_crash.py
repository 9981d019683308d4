"""Crash recovery of barrier-mode Horovod training, with real SIGKILLs of the ranks' training processes.

One `python -m jobs.train` subprocess (its own local[2] Spark, two Horovod ranks over gloo, 5 short epochs, one
checkpoint per epoch, gloo timeout 30 s) is killed twice while the test watches its process tree with psutil:
  1. rank 0's training process inside the write of the epoch-1 checkpoint (a failpoint pauses it there with half
     of the file written; the SIGKILL is real): attempt 1 must resume from epoch 0's checkpoint;
  2. rank 1's training process mid-epoch, right after a later checkpoint is complete: attempt 2 must resume from
     that checkpoint.
The job must then finish, and nothing it started may outlive it: no process of its tree, no work folder of the
launcher under its TMPDIR, no temporary checkpoint file.
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


@pytest.fixture(scope="module")
def crash_run(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> CrashRun:
    base = tmp_path_factory.mktemp("crash")
    ws, tmpdir = base / "workspace", base / "tmp"
    point = "checkpoint.write.epoch-0001.npz"
    marker = base / "failpoints" / point
    ws.mkdir()
    tmpdir.mkdir()
    cfg = load_config("local", [f"storage.workspace={ws}", *SMALL])
    make_features_run(spark, cfg, DeltaStore(spark), rows=2000)
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": str(REPO_ROOT),
           failpoints.ENV: point, failpoints.DIR_ENV: str(marker.parent)}
    argv = [sys.executable, "-m", "jobs.train", *[f"--set={o}" for o in (*JOB, f"storage.workspace={ws}")]]
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
