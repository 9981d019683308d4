"""Training work folders: the sweep removes only folders whose owning task process is gone (no JVM)."""
from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pipelines.training.remote import task

pytestmark = pytest.mark.fast  # the fast tier: no JVM, cluster or training process


def _folder(root: Path, name: str, owner: str | None) -> Path:
    d = root / f"{task.WORKDIR_PREFIX}{name}"
    d.mkdir()
    if owner is not None:
        (d / task.OWNER_FILE).write_text(owner)
    return d


def test_sweep_removes_dead_owners_only(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "from pipelines.training.remote import task; print(task._owner())"],
                            stdout=subprocess.PIPE, text=True)
    dead_owner = dead.communicate()[0].strip()
    gone = _folder(tmp_path, "0-gone", dead_owner)
    live = _folder(tmp_path, "1-live", task._owner())
    half = _folder(tmp_path, "2-half", "")  # a writer between open() and write()
    bare = _folder(tmp_path, "3-bare", None)
    removed = task.sweep_workdirs(str(tmp_path))
    assert removed == [str(gone)]
    assert not gone.exists() and live.exists() and half.exists() and bare.exists()


def test_a_sweep_beside_a_starting_task_never_removes_its_folder(tmp_path: Path) -> None:
    """The CI failure of 8b14e6d: a rank's sweep read the other rank's half-written owner file as dead."""
    stop = threading.Event()
    removed: list[str] = []

    def sweep() -> None:
        while not stop.is_set():
            removed.extend(task.sweep_workdirs(str(tmp_path)))

    sweeper = threading.Thread(target=sweep)
    sweeper.start()
    try:
        made = [task.make_workdir(i, str(tmp_path)) for i in range(300)]
    finally:
        stop.set()
        sweeper.join()
    assert removed == []
    assert all((d / "tmp").is_dir() for d in made)
