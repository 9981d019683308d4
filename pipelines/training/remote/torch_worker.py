"""The PyTorch training process (training.framework pytorch), the twin of worker.py's Keras training: started the
same way by the barrier task, it reads the same task file and returns the same WorkerResult.

One rank: the process group (backends.TorchDdpBackend over the signed store below), the network of torch_net.py
wrapped in DistributedDataParallel (gradients averaged over the ranks at every step; rank 0's initial weights
broadcast at construction), its Petastorm shard through petastorm.pytorch.BatchedDataLoader (num_epochs None and a
fixed number of steps per epoch, so no rank waits for another's last batch), per-row class weights in the loss,
the learning-rate warm-up, per-epoch validation whose predictions are gathered from every rank so all ranks
compute the same metrics and take the same early-stopping decision, and rank 0's checkpoint of every epoch (the
same files as Keras': weights are the state dict's arrays in order, the optimizer's state one byte array written
by torch.save and read back with weights_only). A retried attempt resumes from the newest complete checkpoint.
"""

from __future__ import annotations

import functools
import io
import time
import urllib.parse
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from pipelines.training import checkpoints, control
from pipelines.training.epochs import EarlyStopper, fault_due, strike, warmup_lr
from pipelines.training.remote.task import TaskInfo, put
from pipelines.training.spec import PROGRESS, WorkerResult, WorkerSpec
from pipelines.training.torch_net import load_arrays, state_arrays

POLL_S = (0.01, 0.5)  # first and longest wait between reads of a key not yet set


class SignedStore(dist.Store):
    """torch.distributed's key-value store on the driver's control server: every request signed with the launch's
    secret (pipelines.training.control), answers checked, values kept as opaque bytes in `scope` (one per attempt,
    so a retried attempt never reads what the failed one left). The process group's rendezvous only sets, gets and
    waits for keys."""

    def __init__(self, spec: WorkerSpec, scope: str, timeout_s: float) -> None:
        super().__init__()
        self._spec, self._scope, self._timeout = spec, scope, timeout_s

    def _path(self, key: str) -> str:
        return f"/{self._scope}/{urllib.parse.quote(key, safe='')}"

    def _call(self, method: str, key: str, body: bytes = b"") -> tuple[int, bytes]:
        s = self._spec
        return control.call(s.control_host, s.control_port, s.secret, method, self._path(key), body)

    def set(self, key: str, value: bytes | str) -> None:
        status, _ = self._call("PUT", key, value.encode() if isinstance(value, str) else bytes(value))
        if status != 200:
            raise RuntimeError(f"the driver's store answered {status} to setting {key!r}")

    def get(self, key: str) -> bytes:
        deadline, pause = time.monotonic() + self._timeout, POLL_S[0]
        while True:
            status, body = self._call("GET", key)
            if status == 200:
                return body
            if status != 404 or time.monotonic() > deadline:
                raise RuntimeError(f"the driver's store answered {status} to reading {key!r} "
                                   f"(waited up to {self._timeout:.0f}s)")
            time.sleep(pause)
            pause = min(pause * 2, POLL_S[1])

    def check(self, keys: list[str]) -> bool:
        return all(self._call("GET", k)[0] == 200 for k in keys)

    def wait(self, keys: list[str], timeout: Any = None) -> None:
        for key in keys:
            self.get(key)

    def add(self, key: str, amount: int) -> int:
        raise NotImplementedError("the signed store keeps no counters (the gloo rendezvous needs none)")

    def compare_set(self, key: str, expected: bytes, desired: bytes) -> bytes:
        raise NotImplementedError("the signed store has no compare-and-set (the gloo rendezvous needs none)")

    def delete_key(self, key: str) -> bool:
        return self._call("DELETE", key)[0] == 200

    def num_keys(self) -> int:
        raise NotImplementedError("the signed store does not count its keys")

    def set_timeout(self, timeout: Any) -> None:
        self._timeout = timeout.total_seconds() if hasattr(timeout, "total_seconds") else float(timeout)


def optimizer_array(optimizer: torch.optim.Optimizer) -> np.ndarray:
    buf = io.BytesIO()
    torch.save(optimizer.state_dict(), buf)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


def load_optimizer(optimizer: torch.optim.Optimizer, array: np.ndarray) -> None:
    optimizer.load_state_dict(torch.load(io.BytesIO(array.tobytes()), weights_only=True))


def make_optimizer(params: Any, conf: dict[str, Any], lr: float) -> torch.optim.Optimizer:
    """Adam (Keras' epsilon) or SGD with momentum, as model.make_optimizer builds them for Keras."""
    if conf["name"] == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=conf["momentum"])
    return torch.optim.Adam(params, lr=lr, eps=1e-7)


def loss_of(head: str, net: Any, z: torch.Tensor, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The head's loss of one batch's logits `z` as Keras computes it with per-row weights (mean of weight * loss;
    regression: squared error in the label's units)."""
    import torch.nn.functional as F

    if head == "regression":
        return F.mse_loss(net.activate(z).reshape(-1), y.float())
    ids = y.long().reshape(-1)
    if head == "binary":
        per_row = F.binary_cross_entropy_with_logits(z.reshape(-1), ids.float(), reduction="none")
    else:
        per_row = F.cross_entropy(z, ids, reduction="none")
    return (per_row * weights[ids]).mean()


class Logits(torch.nn.Module):
    """The network's logits as its forward pass: what DistributedDataParallel wraps (its forward hooks average
    the gradients), while the losses stay numerically stable on logits."""

    def __init__(self, net: Any) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.logits(x)


def epoch_metrics(head: str, y: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """The Keras metrics of the head (same names) over all ranks' rows of an epoch."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    if head == "regression":
        err = out.reshape(-1) - y
        return {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err)))}
    ids = y.astype(int)
    if head == "multiclass":
        return {"accuracy": float(np.mean(out.argmax(axis=1) == ids))}
    p = out.reshape(-1)
    two = len(np.unique(ids)) == 2
    return {"auc": float(roc_auc_score(ids, p)) if two else float("nan"),
            "pr_auc": float(average_precision_score(ids, p)) if two else float("nan"),
            "accuracy": float(np.mean((p >= 0.5) == ids))}


def _gather(backend: Any, *arrays: np.ndarray) -> list[np.ndarray]:
    """Every rank's arrays concatenated, on every rank (in rank order)."""
    parts: list[Any] = [None] * backend.size
    dist.all_gather_object(parts, arrays)
    return [np.concatenate([p[i] for p in parts]) for i in range(len(arrays))]


def _mean(backend: Any, value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=backend.device)  # nccl reduces device tensors only
    dist.all_reduce(t)
    return float(t.item()) / backend.size


def _batches(loader: Any, spec: WorkerSpec, device: torch.device) -> Any:
    """(features, label) tensors of the head's input shape, endlessly."""
    shape = (-1, *spec.input_shape) if spec.input_shape else (-1, spec.vector_size)
    for batch in loader:
        yield batch["features"].float().reshape(shape).to(device), batch["label"].to(device)


def train_torch(spec: WorkerSpec, task: TaskInfo) -> WorkerResult:
    """One PyTorch rank's training; the same result as worker.train_worker's."""
    from pipelines.training import torch_net
    from pipelines.training.heads import get_head
    from pipelines.training.model import weights_checksum
    from pipelines.training.remote.backends import start_backend
    from pipelines.training.remote.worker import image_transform, report_start

    conf = spec.training
    phases: dict[str, float] = {}
    mark = time.perf_counter()
    torch.set_num_threads(conf["threads_per_worker"])
    torch.manual_seed(conf["seed"])
    backend = start_backend(spec, task)
    rank, size, device = backend.rank, backend.size, backend.device
    head = get_head(spec.head)
    desc = torch_net.description(conf["network"], spec.vector_size, head.name, spec.num_classes, spec.input_shape,
                                 spec.label_scale)
    net = torch_net.build(desc).to(device)
    opt_conf = conf["optimizer"]
    lr = opt_conf["learning_rate"] * (size if opt_conf["scale_by_workers"] else 1)
    optimizer = make_optimizer(net.parameters(), opt_conf, lr)
    ckpt = checkpoints.resume_point(spec.checkpoint_dir, spec.resume_from, rank)
    if ckpt is not None:
        load_arrays(net, ckpt.weights)
        if ckpt.optimizer:
            load_optimizer(optimizer, ckpt.optimizer[0])
    model = torch.nn.parallel.DistributedDataParallel(Logits(net), device_ids=[0] if device.type == "cuda" else None)
    initial_epoch = ckpt.epoch + 1 if ckpt else 0
    if rank == 0:
        report_start(spec, task.attempt, initial_epoch, ckpt.epoch if ckpt else None)
    history: list[dict[str, float]] = list(ckpt.meta.get("history", [])) if ckpt else []
    es = EarlyStopper(ckpt.meta.get("early_stopping") if ckpt else None,
                      **head.early_stopping(conf["early_stopping"]))
    best = ckpt.best if ckpt else None
    report = functools.partial(put, spec, PROGRESS, str(rank)) if rank == 0 else None
    class_weight = torch.tensor([(spec.class_weight or {}).get(k, 1.0) for k in range(max(spec.num_classes, 1))],
                                dtype=torch.float32, device=device)
    reader = {"batch_size": conf["batch_size"], "cur_shard": rank, "shard_count": size, "num_epochs": None,
              "workers_count": conf["data"]["reader_threads"], "seed": conf["seed"] + rank,
              "shuffling_queue_capacity": conf["data"]["shuffle_buffer"] or 0,
              **({"transform_spec": image_transform(spec.input_shape)} if spec.input_shape else {})}
    train_seconds: list[float] = []
    with spec.train_data.make_torch_loader(**reader) as train_loader, \
            spec.val_data.make_torch_loader(**{**reader, "shuffling_queue_capacity": 0}) as val_loader:
        train_it, val_it = _batches(train_loader, spec, device), _batches(val_loader, spec, device)
        phases["setup"], mark = time.perf_counter() - mark, time.perf_counter()
        for epoch in range(initial_epoch, conf["epochs"]):
            if fault_due(conf["fault"], epoch, task.attempt):
                backend.sync()  # the previous epoch's checkpoint is complete on every rank's view
                strike(conf["fault"], rank, epoch, task.attempt)
            started = time.perf_counter()
            logs = _train_epoch(model, net, optimizer, train_it, spec, head.name, class_weight, lr, size, epoch,
                                conf["optimizer"]["warmup_epochs"], backend)
            train_seconds.append(time.perf_counter() - started)
            logs |= {f"val_{k}": v for k, v in _validate(net, val_it, spec, head.name, class_weight,
                                                           backend).items()}
            logs["epoch_train_seconds"] = train_seconds[-1]
            stop = es.update(epoch, logs)
            history.append({"epoch": epoch, **logs})
            if rank == 0:
                weights = state_arrays(net)
                if es.best_epoch == epoch:
                    best = (epoch, weights)
                meta = {"history": history, "early_stopping": es.state(), "attempt": task.attempt}
                saved = checkpoints.Checkpoint(epoch, weights, [optimizer_array(optimizer)], meta,
                                               *(best or (None, None)))
                checkpoints.save(spec.checkpoint_dir, saved, conf["keep_checkpoints"])
                if report is not None:
                    try:
                        report({**{k: v for k, v in history[-1].items() if np.isfinite(v)}, "attempt": task.attempt})
                    except Exception as e:  # progress is informational; training goes on without it
                        print(f"progress report failed: {e}", flush=True)
            if stop:
                break
        phases["fit"], mark = time.perf_counter() - mark, time.perf_counter()
    phases["close_readers"] = time.perf_counter() - mark
    weights = state_arrays(net)
    last_best = (checkpoints.load_best(spec.checkpoint_dir) or best) if rank == 0 else None
    result = WorkerResult(
        rank=rank, size=size, partition=task.partition, attempt=task.attempt, host=task.host,
        initial_epoch=initial_epoch, epochs_completed=len(history), stopped_early=es.stopped_epoch > 0,
        weights_sha256=weights_checksum(weights), train_seconds=sum(train_seconds),
        samples=len(train_seconds) * spec.steps_per_epoch * conf["batch_size"],
        history=history if rank == 0 else [],
        weights=(last_best[1] if last_best else weights) if rank == 0 else None,
        seconds=phases,
    )
    backend.shutdown()
    return result


def _train_epoch(model: Any, net: Any, optimizer: Any, batches: Any, spec: WorkerSpec, head: str,
                 class_weight: torch.Tensor, lr: float, size: int, epoch: int, warmup: int, backend: Any
                 ) -> dict[str, float]:
    """spec.steps_per_epoch optimizer steps; the epoch's loss (mean over ranks) and metrics (over all rows)."""
    model.train()
    losses, ys, outs = [], [], []
    for step in range(spec.steps_per_epoch):
        x, y = next(batches)
        for group in optimizer.param_groups:
            group["lr"] = warmup_lr(lr, size, warmup, epoch, step, spec.steps_per_epoch)
        optimizer.zero_grad(set_to_none=True)
        z = model(x)
        loss = loss_of(head, net, z, y, class_weight)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        with torch.no_grad():
            outs.append(net.activate(z.detach()).cpu().numpy())
        ys.append(y.cpu().numpy())
    _sync_buffers(net)
    y_all, out_all = _gather(backend, np.concatenate(ys).reshape(-1), np.concatenate(outs))
    return {"loss": _mean(backend, float(np.mean(losses))), **epoch_metrics(head, y_all, out_all),
            "lr": optimizer.param_groups[0]["lr"]}


def _validate(net: Any, batches: Any, spec: WorkerSpec, head: str, class_weight: torch.Tensor,
              backend: Any) -> dict[str, float]:
    """spec.validation_steps batches per rank in inference mode; loss (mean over ranks) and metrics (all rows)."""
    net.eval()
    losses, ys, outs = [], [], []
    with torch.no_grad():
        for _ in range(spec.validation_steps):
            x, y = next(batches)
            z = net.logits(x)
            losses.append(float(loss_of(head, net, z, y, class_weight)))
            outs.append(net.activate(z).cpu().numpy())
            ys.append(y.cpu().numpy())
    y_all, out_all = _gather(backend, np.concatenate(ys).reshape(-1), np.concatenate(outs))
    return {"loss": _mean(backend, float(np.mean(losses))), **epoch_metrics(head, y_all, out_all)}


def _sync_buffers(net: Any) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) on every rank: DDP broadcasts them before each forward,
    so after the epoch's last step each rank holds its own; checkpoints and the weights check compare the same."""
    for buf in net.buffers():
        dist.broadcast(buf, 0)
