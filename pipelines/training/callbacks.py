"""Keras callbacks of the training process (worker side; imports TensorFlow).

Order in model.fit: the backend's callbacks (Horovod: broadcast, metric averaging, warm-up) first, so the logs
the others see are already averaged over ranks and every rank takes the same early-stopping decision.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from pipelines.training import checkpoints
from pipelines.training.epochs import fault_due, strike, warmup_lr


class EpochTimer(tf.keras.callbacks.Callback):
    """Seconds spent training in each epoch (start of the epoch to the start of its validation)."""

    def __init__(self) -> None:
        super().__init__()
        self.train_seconds: list[float] = []
        self._start = 0.0
        self._pending = False

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start, self._pending = time.perf_counter(), True

    def on_test_begin(self, logs: dict | None = None) -> None:
        if self._pending:
            self.train_seconds.append(time.perf_counter() - self._start)
            self._pending = False

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.on_test_begin()
        if logs is not None:
            logs["epoch_train_seconds"] = self.train_seconds[-1]


class FaultInjection(tf.keras.callbacks.Callback):
    """training.fault (tests): at the start of `fail_epoch` all ranks sync, so the previous epoch's checkpoint is
    complete, then rank `fail_rank` raises (mode raise) or dies without a traceback (mode exit)."""

    def __init__(self, fault: dict[str, Any], rank: int, attempt: int, sync: Callable[[], None]) -> None:
        super().__init__()
        self.fault, self.rank, self.attempt, self.sync = fault, rank, attempt, sync

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if not fault_due(self.fault, epoch, self.attempt):
            return
        self.sync()
        strike(self.fault, self.rank, epoch, self.attempt)


class ResumableEarlyStopping(tf.keras.callbacks.EarlyStopping):
    """EarlyStopping whose counters survive a restart: saved in each checkpoint, restored at train begin."""

    def __init__(self, state: dict[str, Any] | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._resume_state = state

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)
        if self._resume_state:
            self.wait = int(self._resume_state["wait"])
            self.best = float(self._resume_state["best"])
            self.best_epoch = int(self._resume_state["best_epoch"])

    def state(self) -> dict[str, Any]:
        return {"wait": int(self.wait), "best": float(self.best), "best_epoch": int(self.best_epoch)}


class EpochRecorder(tf.keras.callbacks.Callback):
    """Appends each epoch's logs to the history; with a folder (rank 0) writes the epoch's checkpoint, which also
    holds the best epoch so far and its weights (`best`: the resumed checkpoint's at start), so one file publishes
    both and no kill leaves a checkpoint naming a best epoch whose weights are elsewhere; then reports the epoch to
    the driver."""

    def __init__(self, history: list[dict[str, float]], es: ResumableEarlyStopping, folder: str | None,
                 keep: int, attempt: int, report: Callable[[dict[str, Any]], None] | None,
                 best: tuple[int, list[Any]] | None = None) -> None:
        super().__init__()
        self.history, self.es, self.folder, self.keep = history, es, folder, keep
        self.attempt, self.report, self.best = attempt, report, best

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        record = {"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()}}
        self.history.append(record)
        if self.folder is None:
            return
        meta = {"history": self.history, "early_stopping": self.es.state(), "attempt": self.attempt}
        weights = self.model.get_weights()
        if self.es.best_epoch == epoch:
            self.best = (epoch, weights)
        best_epoch, best_weights = self.best or (None, None)
        checkpoints.save(self.folder, checkpoints.Checkpoint(epoch, weights, self.model.optimizer.get_weights(),
                                                             meta, best_epoch, best_weights), self.keep)
        if self.report is not None:
            try:
                self.report({**record, "attempt": self.attempt})
            except Exception as e:  # progress is informational; training goes on without it
                print(f"progress report failed: {e}", flush=True)


class LinearWarmup(tf.keras.callbacks.Callback):
    """tf-mwms warm-up (Horovod has its own): learning rate from lr / size up to lr over `epochs`, per batch."""

    def __init__(self, lr: float, size: int, epochs: int, steps_per_epoch: int) -> None:
        super().__init__()
        self.lr, self.size, self.epochs, self.steps = lr, size, epochs, steps_per_epoch
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        if self.epoch >= self.epochs:
            return
        tf.keras.backend.set_value(self.model.optimizer.lr,
                                   warmup_lr(self.lr, self.size, self.epochs, self.epoch, batch, self.steps))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["lr"] = float(tf.keras.backend.get_value(self.model.optimizer.lr))
