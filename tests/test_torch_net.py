"""PyTorch's pure pieces (the fast tier: no JVM, no training process): the networks of torch_net.py and their
saved form, the optimizer state a checkpoint keeps, and early stopping as Keras decides it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.training import torch_net
from pipelines.training.epochs import EarlyStopper
from pipelines.training.remote.torch_worker import load_optimizer, optimizer_array
from pipelines.training.torch_net import load_arrays, state_arrays

pytestmark = pytest.mark.fast

MLP = {"kind": "mlp", "mlp": {"hidden_units": [8, 4], "activation": "relu", "dropout": 0.2, "batch_norm": True},
       "cnn": {"filters": [4, 8], "kernel_size": 3, "dense_units": 16, "dropout": 0.25}}
CNN = {**MLP, "kind": "cnn"}


# ---- pure pieces (no JVM) --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("network", "head", "shape", "width"), [
    (MLP, "binary", None, 1), (MLP, "regression", None, 1), (CNN, "multiclass", (8, 8, 1), 10)])
def test_networks_give_the_heads_outputs_and_save_and_load_exactly(network: dict, head: str, shape: tuple | None,
                                                                   width: int, tmp_path: Path) -> None:
    desc = torch_net.description(network, 6, head, 10 if head == "multiclass" else 2, shape,
                                 (50.0, 4.0) if head == "regression" else None)
    model = torch_net.TorchModel(desc, torch_net.build(desc))
    x = np.random.default_rng(0).normal(size=(33, *(shape or (6,)))).astype(np.float32)
    out = model.predict(x)
    assert np.allclose(model.predict(x, batch_size=10), out, atol=1e-6)  # chunks: the same rows' outputs
    assert out.shape == (33, width) and out.dtype == np.float32
    if head == "binary":
        assert ((out > 0) & (out < 1)).all()
    if head == "multiclass":
        assert np.allclose(out.sum(axis=1), 1.0, atol=1e-5)
    if head == "regression":  # the zero-initialised bias: a fresh network predicts about the label's mean
        assert 30 < float(np.median(out)) < 70
    model.save(str(tmp_path / "m"))
    again = torch_net.TorchModel.load(str(tmp_path / "m"))
    assert np.array_equal(again.predict(x), out)
    copy = torch_net.TorchModel.from_arrays(desc, state_arrays(model.net))
    assert np.array_equal(copy.predict(x), out)
    with pytest.raises(ValueError, match="another architecture"):
        torch_net.TorchModel.from_arrays(desc, state_arrays(model.net)[:-1])


def test_optimizer_state_survives_a_checkpoint() -> None:
    torch.manual_seed(0)
    desc = torch_net.description({**MLP, "mlp": {**MLP["mlp"], "dropout": 0.0}}, 6, "binary", 2, None, None)
    net = torch_net.build(desc)
    opt = torch.optim.Adam(net.parameters(), lr=0.01, eps=1e-7)
    x, y = torch.randn(16, 6), torch.randint(0, 2, (16, 1)).float()
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy(net(x), y).backward()
        opt.step()
    weights, state = state_arrays(net), optimizer_array(opt)
    net2 = torch_net.build(desc)
    opt2 = torch.optim.Adam(net2.parameters(), lr=0.01, eps=1e-7)
    load_arrays(net2, weights)
    load_optimizer(opt2, state)
    for n, o in ((net, opt), (net2, opt2)):  # one more identical step on both
        o.zero_grad()
        torch.nn.functional.binary_cross_entropy(n(x), y).backward()
        o.step()
    assert all(np.array_equal(a, b) for a, b in zip(state_arrays(net), state_arrays(net2), strict=True))


@pytest.mark.parametrize("mode", ["max", "min"])
def test_early_stopping_decides_as_keras_does(mode: str) -> None:
    import tensorflow as tf

    values = [0.5, 0.6, 0.6005, 0.59, 0.61, 0.58, 0.57, 0.56, 0.7] if mode == "max" else [
        1.0, 0.9, 0.8995, 0.95, 0.85, 0.9, 0.91, 0.92, 0.5]
    keras = tf.keras.callbacks.EarlyStopping(monitor="val_m", patience=2, min_delta=0.001, mode=mode)
    keras.set_model(tf.keras.Sequential())
    keras.on_train_begin()
    ours = EarlyStopper(None, "val_m", 2, 0.001, mode)
    for epoch, v in enumerate(values):
        keras.on_epoch_end(epoch, {"val_m": v})
        stop = ours.update(epoch, {"val_m": v})
        assert (ours.best_epoch, ours.wait, ours.best) == (keras.best_epoch, keras.wait, pytest.approx(keras.best))
        assert stop == bool(keras.model.stop_training), epoch
        if stop:
            break
    assert ours.stopped_epoch == keras.stopped_epoch > 0
    resumed = EarlyStopper(ours.state(), "val_m", 2, 0.001, mode)
    assert resumed.state() == ours.state()


