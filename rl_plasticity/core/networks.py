"""Networks built from replica-batched layers that expose their hidden-unit groups."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rl_plasticity.core.layers import Linear, uniform_bound
from rl_plasticity.core.units import UnitGroup

ACTIVATIONS = {
    "relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "leaky_relu": F.leaky_relu,
    "elu": F.elu, "swish": F.silu, "linear": lambda x: x,
}


class MLP(nn.Module):
    """Fully connected net: sizes [in, h1, ..., out]; each hidden layer is a unit group.

    With no hidden layers it is a linear learner. `init` is "lecun" (all layers U(+-sqrt(3/fan_in)),
    the paper's PPO setting) or "kaiming" (hidden layers scaled by the activation's gain, output layer
    linear gain: the paper's supervised setting).
    """

    def __init__(self, sizes: list[int], activation: str = "relu", init: str = "lecun", replicas: int = 1):
        super().__init__()
        if len(sizes) < 2:
            raise ValueError("an MLP needs at least input and output sizes")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")
        self.activation_name, self.act = activation, ACTIVATIONS[activation]
        n_layers = len(sizes) - 1
        self.layers = nn.ModuleList(
            Linear(sizes[i], sizes[i + 1], replicas=replicas,
                   bound=uniform_bound(sizes[i], init, activation if i < n_layers - 1 else "linear"))
            for i in range(n_layers))
        self.groups = [UnitGroup(f"layer{i}", self.layers[i], self.layers[i + 1]) for i in range(n_layers - 1)]

    @property
    def replicas(self) -> int:
        return self.layers[0].replicas

    def reset_parameters(self, generators: list[torch.Generator | None]) -> None:
        for layer in self.layers:
            layer.reset_parameters(generators)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer, group in zip(self.layers, self.groups):
            x = self.act(layer(x))
            # The tap: methods and metrics read the latest activations, always as [R, B, U].
            group.activation = (x if x.dim() > 2 else x.unsqueeze(0)).detach()
        return self.layers[-1](x)
