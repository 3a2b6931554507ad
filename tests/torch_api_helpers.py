"""What the tests of the public PyTorch API share: the core's config for a learner with given methods and
optimizer, the API's optimizer for the same section, and one network as the core's MLP (or ConvNet) and as a
plain nn.Sequential with the same weights."""

from __future__ import annotations

import copy

import torch
from torch import nn

from rl_plasticity.core.builders import METHOD_DEFAULTS
from rl_plasticity.core.convnet import ConvNet
from rl_plasticity.core.networks import MLP

METHOD_SEED = 7  # the methods' generator, in the core's learner and in `Plasticity`


def method_cfg(optimizer: dict, methods: dict) -> dict:
    """The core's method sections with `optimizer` updated and each of `methods` enabled with its options."""
    cfg = copy.deepcopy(METHOD_DEFAULTS)
    for key, value in optimizer.items():  # an optimizer's own options sit in its subsection, e.g. upgd.sigma
        if isinstance(value, dict):
            cfg["optimizer"][key].update(value)
        else:
            cfg["optimizer"][key] = value
    for name, options in methods.items():
        cfg[name].update(enabled=True, **options)
    return cfg


def plain_optimizer(params, o: dict):
    """The public API's optimizer that a core `optimizer` section (as method_cfg takes it) names."""
    import rl_plasticity as api

    decay = o.get("weight_decay", 0.0)
    if o["name"] == "adam":
        return api.Adam(params, lr=o["lr"], betas=o.get("betas", (0.9, 0.999)), weight_decay=decay)
    if o["name"] == "sgd":
        return api.SGD(params, lr=o["lr"], momentum=o.get("momentum", 0.0), weight_decay=decay)
    cls = {"upgd": api.UPGD, "idbd": api.IDBD, "autostep": api.Autostep, "meta_adam": api.MetaAdam}[o["name"]]
    adam = {"betas": o.get("betas", (0.9, 0.999))} if o["name"] == "meta_adam" else {}
    return cls(params, lr=o["lr"], weight_decay=decay, **adam, **o.get(o["name"], {}))


def core_and_plain_mlp():
    """A 5-8-8-2 ReLU net as the core's MLP (LeCun init, seed 1) and as an nn.Sequential with the same weights:
    (core, plain, the plain net's Linear layers)."""
    core = MLP([5, 8, 8, 2], activation="relu", init="lecun")
    core.reset_parameters([torch.Generator().manual_seed(1)])
    plain = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    layers = [plain[0], plain[2], plain[4]]
    copy_weights(layers, core.layers)
    return core, plain, layers


def core_and_plain_convnet():
    """Three conv layers with pooling, a Flatten and three linear layers, as the core's ConvNet (seed 1) and as an
    nn.Sequential with the same weights: (core, plain, the plain net's Conv2d and Linear layers)."""
    core = ConvNet(num_classes=2, channels=(3, 4, 5), kernels=(3, 3, 3), hidden=(6, 6), image_size=24, in_channels=1)
    core.reset_parameters([torch.Generator().manual_seed(1)])
    plain = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 5, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))
    layers = [m for m in plain if isinstance(m, (nn.Conv2d, nn.Linear))]
    copy_weights(layers, core.layers)
    return core, plain, layers


def copy_weights(plain_layers, core_layers) -> None:
    """Give each plain layer the weights and bias of the core layer beside it (replica 0)."""
    with torch.no_grad():
        for plain, core in zip(plain_layers, core_layers):
            plain.weight.copy_(core.weight[0])
            plain.bias.copy_(core.bias[0])
