"""The PyTorch network of `training.network` with its head's output, the twin of model.py's Keras network.

Self-contained on purpose (torch and the standard library only): the logged PyTorch model ships this file in its
code/ and serving rebuilds the network from it and the network description in meta.json, then loads the state dict
(read with weights_only: nothing pickled is ever executed). The workers and the driver build the same network.

Same architecture and defaults as the Keras builder: Glorot-uniform weights and zero biases, BatchNorm with Keras'
momentum (0.99, i.e. torch's 0.01) and epsilon (1e-3), same-padded convolutions with a 2x2 max-pool while the image
is at least 2x2. Images come in Keras' layout (rows, height, width, channels) and are transposed inside the
network, so callers pass the same arrays to either framework. The forward pass returns what the Keras model
returns: P(label = 1) of shape (rows, 1) for binary, class probabilities for multiclass, and the value in the
label's units for regression; `logits` is the pre-activation the losses use.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "elu": nn.ELU, "selu": nn.SELU, "gelu": nn.GELU,
                                           "tanh": nn.Tanh}


def description(network: dict[str, Any], vector_size: int, head: str, num_classes: int,
                input_shape: list[int] | tuple[int, ...] | None, label_scale: tuple[float, float] | None
                ) -> dict[str, Any]:
    """Everything `build` needs, as JSON (meta.json of the logged model)."""
    return {"network": network, "vector_size": vector_size, "head": head, "num_classes": num_classes,
            "input_shape": list(input_shape) if input_shape else None,
            "label_scale": list(label_scale) if label_scale else None}


class Network(nn.Module):
    """Body + output unit(s) + the head's activation (binary sigmoid, multiclass softmax, regression rescaling)."""

    def __init__(self, body: nn.Module, width: int, head: str, num_classes: int,
                 label_scale: tuple[float, float] | None, image: bool) -> None:
        super().__init__()
        self.body, self.head, self.image = body, head, image
        self.out = _dense(width, num_classes if head == "multiclass" else 1)
        mean, std = label_scale or (0.0, 1.0)
        self.register_buffer("label_mean", torch.tensor(float(mean)))
        self.register_buffer("label_std", torch.tensor(float(std) if std > 0 else 1.0))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.image:
            x = x.permute(0, 3, 1, 2)  # (rows, height, width, channels) -> (rows, channels, height, width)
        return self.out(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.logits(x))

    def activate(self, z: torch.Tensor) -> torch.Tensor:
        """The head's output from logits `z`."""
        if self.head == "binary":
            return torch.sigmoid(z)
        if self.head == "multiclass":
            return torch.softmax(z, dim=1)
        return z * self.label_std + self.label_mean


def build(desc: dict[str, Any]) -> Network:
    """The network `desc` (from `description`) describes, freshly initialised."""
    network, shape = desc["network"], desc.get("input_shape")
    if network["kind"] == "cnn":
        if not shape or len(shape) != 3:
            raise ValueError("training.network.kind cnn needs image features (height, width, channels); this "
                             "feature table has none: use kind mlp")
        body, width = _cnn(network["cnn"], tuple(shape))
    elif network["kind"] == "mlp":
        body, width = _mlp(network["mlp"], int(desc["vector_size"]))
    else:
        raise ValueError(f"training.network.kind {network['kind']!r} has no builder")
    scale = desc.get("label_scale")
    return Network(body, width, desc["head"], int(desc["num_classes"]), tuple(scale) if scale else None,
                   network["kind"] == "cnn")


def _dense(n_in: int, n_out: int) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def _mlp(mlp: dict[str, Any], vector_size: int) -> tuple[nn.Module, int]:
    layers: list[nn.Module] = []
    width = vector_size
    for units in mlp["hidden_units"]:
        layers.append(_dense(width, units))
        if mlp["batch_norm"]:
            layers.append(nn.BatchNorm1d(units, eps=1e-3, momentum=0.01))
        layers.append(ACTIVATIONS[mlp["activation"]]())
        if mlp["dropout"] > 0:
            layers.append(nn.Dropout(mlp["dropout"]))
        width = units
    return nn.Sequential(*layers), width


def _cnn(cnn: dict[str, Any], shape: tuple[int, ...]) -> tuple[nn.Module, int]:
    height, width, channels = shape
    layers: list[nn.Module] = []
    for filters in cnn["filters"]:
        conv = nn.Conv2d(channels, filters, cnn["kernel_size"], padding="same")
        nn.init.xavier_uniform_(conv.weight)
        nn.init.zeros_(conv.bias)
        layers += [conv, nn.ReLU()]
        if height >= 2 and width >= 2:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        channels = filters
    layers += [nn.Flatten(), _dense(channels * height * width, cnn["dense_units"]), nn.ReLU()]
    if cnn["dropout"] > 0:
        layers.append(nn.Dropout(cnn["dropout"]))
    return nn.Sequential(*layers), cnn["dense_units"]


def state_arrays(net: nn.Module) -> list[Any]:
    """The network's state dict as numpy arrays, in its order (a checkpoint's and a worker's weights)."""
    return [t.detach().cpu().numpy().copy() for t in net.state_dict().values()]


def load_arrays(net: nn.Module, arrays: list[Any]) -> None:
    """Put `arrays` (from `state_arrays` of the same architecture) into the network."""
    keys = list(net.state_dict())
    if len(keys) != len(arrays):
        raise ValueError(f"{len(arrays)} arrays for a state dict of {len(keys)} entries: another architecture")
    net.load_state_dict({k: torch.as_tensor(a) for k, a in zip(keys, arrays, strict=True)})


def load(desc: dict[str, Any], state: dict[str, torch.Tensor]) -> Network:
    """The network of `desc` holding `state` (a state dict), in inference mode."""
    net = build(desc)
    net.load_state_dict(state)
    return net.eval()


class TorchModel:
    """A trained network with its description: `predict` on numpy arrays (what the driver's evaluation and the
    served model call, as on a Keras model), saved as a folder of network.json and the state dict (state.pt)."""

    def __init__(self, desc: dict[str, Any], net: Network) -> None:
        self.desc, self.net = desc, net.eval()

    @classmethod
    def from_arrays(cls, desc: dict[str, Any], arrays: list[Any]) -> TorchModel:
        """The network of `desc` holding `arrays`, the state dict's values in order (a worker's weights)."""
        net = build(desc)
        load_arrays(net, arrays)
        return cls(desc, net)

    @classmethod
    def load(cls, folder: str) -> TorchModel:
        import json
        import os

        with open(os.path.join(folder, "network.json")) as f:
            desc = json.load(f)
        state = torch.load(os.path.join(folder, "state.pt"), map_location="cpu", weights_only=True)
        return cls(desc, load(desc, state))

    def save(self, folder: str) -> None:
        import json
        import os

        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "network.json"), "w") as f:
            json.dump(self.desc, f, indent=2, sort_keys=True)
        torch.save(self.net.state_dict(), os.path.join(folder, "state.pt"))

    def predict(self, x: Any, batch_size: int = 4096, verbose: int = 0) -> Any:
        """The network's outputs (numpy, float32) for the rows of `x`, `batch_size` rows at a time."""
        import numpy as np

        x = np.asarray(x, dtype=np.float32)
        with torch.inference_mode():
            parts = [self.net(torch.from_numpy(x[i:i + batch_size])).numpy() for i in range(0, len(x), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, self.width), dtype=np.float32)

    @property
    def width(self) -> int:
        return int(self.desc["num_classes"]) if self.desc["head"] == "multiclass" else 1
