"""Checkpoint files and their completeness markers: what counts as published, what an interrupted save leaves and
clean removes, and that a file whose bytes do not match its marker is never loaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.training import checkpoints
from pipelines.training.checkpoints import Checkpoint

pytestmark = pytest.mark.fast


def ckpt(epoch: int, best: int | None = None) -> Checkpoint:
    weights = [np.full((2, 2), float(epoch)), np.arange(3.0)]
    best_weights = [np.full((2, 2), float(best)), np.arange(3.0)] if best is not None and best != epoch else None
    return Checkpoint(epoch, weights, [np.array([epoch])], {"history": [epoch]}, best, best_weights)


def test_save_publishes_with_a_marker_keeps_the_newest_and_round_trips(tmp_path: Path) -> None:
    folder = str(tmp_path / "ck")
    for epoch in range(4):
        checkpoints.save(folder, ckpt(epoch, best=1), keep=2)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "epoch-0002.npz", "epoch-0002.npz.done", "epoch-0003.npz", "epoch-0003.npz.done"]
    assert checkpoints.list_epochs(folder) == [2, 3]
    latest = checkpoints.load_latest(folder)
    assert latest is not None and latest.epoch == 3 and latest.meta == {"history": [3]}
    assert [w.tolist() for w in latest.weights] == [[[3.0, 3.0], [3.0, 3.0]], [0.0, 1.0, 2.0]]
    assert latest.optimizer[0].tolist() == [3]
    best = checkpoints.load_best(folder)
    assert best is not None and best[0] == 1 and best[1][0].tolist() == [[1.0, 1.0], [1.0, 1.0]]


def test_the_best_epoch_may_be_the_latest() -> None:
    c = ckpt(5, best=5)
    assert c.best is not None and c.best[0] == 5 and c.best[1] is c.weights
    assert ckpt(5).best is None


def test_clean_removes_what_an_interrupted_save_left(tmp_path: Path) -> None:
    folder = tmp_path / "ck"
    checkpoints.save(str(folder), ckpt(0), keep=5)
    (folder / "epoch-0001.npz").write_bytes(b"half")  # written, marker never published
    (folder / "epoch-0002.npz.done").write_text("{}")  # a marker whose file is gone
    (folder / "epoch-0003.npz.1a2b3c4d.tmp").write_bytes(b"")
    (folder / "notes.txt").write_text("kept")
    assert checkpoints.list_epochs(str(folder)) == [0]
    assert sorted(checkpoints.clean(str(folder))) == ["epoch-0001.npz", "epoch-0002.npz.done",
                                                      "epoch-0003.npz.1a2b3c4d.tmp"]
    assert sorted(p.name for p in folder.iterdir()) == ["epoch-0000.npz", "epoch-0000.npz.done", "notes.txt"]


def test_a_file_that_does_not_match_its_marker_is_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = str(tmp_path / "ck")
    checkpoints.save(folder, ckpt(0), keep=5)
    path = checkpoints.save(folder, ckpt(1), keep=5)
    Path(path).write_bytes(Path(path).read_bytes()[:-10])  # torn after the marker was written
    latest = checkpoints.load_latest(folder)
    assert latest is not None and latest.epoch == 0
    assert f"checkpoint {path} does not match its completeness marker: skipped" in capsys.readouterr().out
    assert checkpoints.load_latest(str(tmp_path / "none")) is None
