"""Per-epoch rules that do not depend on the framework: early stopping as Keras' EarlyStopping decides it (with
the same resumable state), the linear learning-rate warm-up, and the test-only fault injection. The PyTorch
training loop uses them directly; the Keras callbacks (callbacks.py) apply the same rules inside model.fit."""

from __future__ import annotations

import math
import os
from typing import Any


class InjectedFault(RuntimeError):
    """Raised by the test-only fault injection (training.fault)."""


class EarlyStopper:
    """Keras' EarlyStopping: an epoch improves when monitor - min_delta > best (mode max; + and < for min);
    training stops once `patience` epochs passed without one (never after the first epoch). `state()` is what a
    checkpoint keeps, the same keys as callbacks.ResumableEarlyStopping."""

    def __init__(self, state: dict[str, Any] | None, monitor: str, patience: int, min_delta: float,
                 mode: str) -> None:
        self.monitor, self.patience, self.mode = monitor, patience, mode
        self.min_delta = abs(min_delta)
        self.wait, self.best, self.best_epoch, self.stopped_epoch = 0, (math.inf if mode == "min" else -math.inf), 0, 0
        if state:
            self.wait, self.best, self.best_epoch = int(state["wait"]), float(state["best"]), int(state["best_epoch"])

    def improves(self, value: float) -> bool:
        return value + self.min_delta < self.best if self.mode == "min" else value - self.min_delta > self.best

    def update(self, epoch: int, logs: dict[str, float]) -> bool:
        """Record `epoch`'s logs; True when training should stop after it."""
        value = logs.get(self.monitor)
        if value is None or not math.isfinite(value):
            return False
        self.wait += 1
        if self.improves(value):
            self.best, self.best_epoch, self.wait = float(value), epoch, 0
            return False
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            return True
        return False

    def state(self) -> dict[str, Any]:
        return {"wait": int(self.wait), "best": float(self.best), "best_epoch": int(self.best_epoch)}


def warmup_lr(lr: float, size: int, epochs: int, epoch: int, step: int, steps_per_epoch: int) -> float:
    """The learning rate at `step` of `epoch`: from lr / size up to lr over the first `epochs` epochs (Horovod's
    LearningRateWarmupCallback and callbacks.LinearWarmup), lr afterwards."""
    if epochs <= 0 or size <= 1 or epoch >= epochs:
        return lr
    progress = (epoch + (step + 1) / steps_per_epoch) / epochs
    return lr / size * (1 + progress * (size - 1))


def fault_due(fault: dict[str, Any], epoch: int, attempt: int) -> bool:
    """Whether training.fault (tests) strikes at the start of `epoch` in this attempt."""
    return (fault["fail_rank"] is not None and epoch == fault["fail_epoch"]
            and not (fault["only_first_attempt"] and attempt > 0))


def strike(fault: dict[str, Any], rank: int, epoch: int, attempt: int) -> None:
    """training.fault's blow on the failing rank (call once every rank synced at the start of `epoch`): mode exit
    dies without a traceback, mode raise raises InjectedFault; other ranks go on."""
    if rank != fault["fail_rank"]:
        return
    if fault["mode"] == "exit":
        os._exit(17)
    raise InjectedFault(f"injected fault: rank {rank} at epoch {epoch} (attempt {attempt})")
