"""Networks built from replica-batched layers that expose their hidden-unit groups.

Two MLP options from the plasticity literature:

- `norm="layer"`: every hidden layer is Linear -> LayerNorm -> activation, the LayerNorm with a per-unit
  gain (init 1) and bias (init 0) per replica (Ba, Kiros & Hinton 2016, eq. 4; Lyle, Zheng, Khetarpal,
  Martens, van Hasselt, Pascanu & Dabney 2024, "Disentangling the causes of plasticity loss in neural
  networks", recommend LayerNorm together with weight decay, which is `optimizer.weight_decay`). The gain
  and bias belong to the group's units: a unit that CBP or ReDo replaces gets gain 1, bias 0 and a fresh
  optimizer state for both. LayerNorm normalises across the units of a layer, so replacing one unit
  changes the mean and variance every other unit of that layer is normalised by: the replacement is not
  local to the unit, and CBP's mean-to-bias transfer, which removes exactly the replaced unit's own mean
  contribution (it reads the post-norm, post-activation tap, which is what the next layer reads), no
  longer leaves the output unchanged on average: the other units' outputs move a little too.
- `activation="crelu"`: concatenated ReLU, concat(relu(h), relu(-h)) (Shang et al. 2016; Abbas, Zhao,
  Modayil, White & Machado 2023, "Loss of plasticity in continual deep reinforcement learning"). A layer
  of U units feeds 2U inputs to the next one; the sizes still count units (the next layer's fan-in is
  2U, which sets its init bound). Unit i's outgoing weights are columns i and U + i, and its tap is
  [R, B, U, 2] (relu(h), relu(-h)); see core/units.py. CBP's utility, ReDo's score and the metrics
  average a unit over both halves (so a CReLU unit is dormant only where h = 0); CBP and ReDo zero both
  columns and reset their optimizer state, and its mean-to-bias transfer keeps one running mean per half.
  Kaiming init uses ReLU's gain: each of the 2U inputs has the second moment of a ReLU output, so the
  gain that keeps the variance is the same.

Plasticity injection into the last k >= 2 layers (core/methods/reset.py) keeps its frozen heads on the MLP
(`frozen_heads`; core/frozen_heads.py keeps them, for the ConvNet too): a head may start at any layer, and the
MLP supplies how one of its layers is computed with a frozen head's tensors: the replica linear map, the
LayerNorm with its gain and bias (hidden layers, `net.norm: layer`), and the activation (CReLU included). The
heads that share a start are computed together, their head axis folded into the replica axis.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rl_plasticity.core.frozen_heads import FrozenHeads
from rl_plasticity.core.layers import Linear, replica_linear, uniform_bound
from rl_plasticity.core.units import UnitGroup, columns, paired_columns


def crelu(x: torch.Tensor) -> torch.Tensor:
    """concat(relu(x), relu(-x)) along the last axis: [..., U] -> [..., 2U]."""
    return torch.cat((torch.relu(x), torch.relu(-x)), -1)


ACTIVATIONS = {
    "relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "leaky_relu": F.leaky_relu,
    "elu": F.elu, "swish": F.silu, "linear": lambda x: x, "crelu": crelu,
}
PAIRED_ACTIVATIONS = {"crelu": "relu"}  # activations whose units feed two inputs -> the init gain they take
NORMS = ("none", "layer")


def mlp_config_problem(cfg: dict) -> str | None:
    """What a problem's resolved config asks of its MLP that the net or its methods cannot do, as a one-line
    message naming the key; None when nothing is wrong."""
    net = cfg["net"]
    if net["norm"] != "none" and not net["hidden"]:
        return "config key 'net.norm': a net with no hidden layers has nothing to normalise; set it to 'none'"
    return None


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """Layer norm over the last axis with a per-unit gain and bias per replica (weight, bias [R, U]);
    x is [R, B, U], or [B, U] with one replica."""
    units = x.shape[-1]
    if x.dim() == 2:  # [B, U] with a single replica
        return F.layer_norm(x, (units,), weight.squeeze(0), bias.squeeze(0), eps)
    # Every replica normalises alike; only the affine part differs per replica.
    return torch.addcmul(bias.unsqueeze(1), F.layer_norm(x, (units,), eps=eps), weight.unsqueeze(1))


class LayerNorm(nn.Module):
    """Layer norm over the last axis (the units) with a per-unit gain and bias per replica: weight, bias [R, U].

    y = (z - mean(z)) / sqrt(var(z) + eps) * weight + bias, mean and (biased) variance over the U units of
    each input, as torch.nn.LayerNorm. Inputs are [R, B, U], or [B, U] with one replica.
    """

    def __init__(self, units: int, replicas: int = 1, eps: float = 1e-5):
        super().__init__()
        self.units, self.eps = units, eps
        self.weight = nn.Parameter(torch.ones(replicas, units))
        self.bias = nn.Parameter(torch.zeros(replicas, units))

    @torch.no_grad()
    def reset_units(self, mask: torch.Tensor) -> None:
        """Units in mask [R, U] get gain 1 and bias 0, their init."""
        self.weight[mask] = 1.0
        self.bias[mask] = 0.0

    def reset_parameters(self, generators=None) -> None:
        self.reset_units(torch.ones(self.weight.shape, dtype=torch.bool, device=self.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"units={self.units}, replicas={self.weight.shape[0]}, eps={self.eps}"


class MLP(FrozenHeads, nn.Module):
    """Fully connected net: sizes [in, h1, ..., out]; each hidden layer is a unit group.

    With no hidden layers it is a linear learner. `init` is "lecun" (all layers U(+-sqrt(3/fan_in)),
    the paper's PPO setting) or "kaiming" (hidden layers scaled by the activation's gain, output layer
    linear gain: the paper's supervised setting). `norm` is "none" or "layer" (see the module's docstring).
    A frozen head of plasticity injection may start at any of its layers (`first_head_layer` 0).
    """

    def __init__(self, sizes: list[int], activation: str = "relu", init: str = "lecun", replicas: int = 1,
                 norm: str = "none"):
        super().__init__()
        if len(sizes) < 2:
            raise ValueError("an MLP needs at least input and output sizes")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
        self.activation_name, self.act, self.norm_name = activation, ACTIVATIONS[activation], norm
        self.paired = activation in PAIRED_ACTIVATIONS
        gain = PAIRED_ACTIVATIONS.get(activation, activation)
        n_layers = len(sizes) - 1
        fan_ins = [sizes[0], *[2 * s if self.paired else s for s in sizes[1:-1]]]
        self.layers = nn.ModuleList(
            Linear(fan_ins[i], sizes[i + 1], replicas=replicas,
                   bound=uniform_bound(fan_ins[i], init, gain if i < n_layers - 1 else "linear"))
            for i in range(n_layers))
        # Empty without a norm, so the parameters and state dict are what they were before norms existed.
        self.norms = nn.ModuleList(LayerNorm(sizes[i + 1], replicas) for i in range(n_layers - 1)
                                   if norm == "layer")
        self.groups = [
            UnitGroup(f"layer{i}", self.layers[i], self.layers[i + 1], norm=self.norms[i] if self.norms else None,
                      outgoing_view=paired_columns(sizes[i + 1]) if self.paired else columns,
                      mean_shape=(2,) if self.paired else ())
            for i in range(n_layers - 1)]
        self.set_frozen_heads([])  # plasticity injection into k >= 2 layers (core/frozen_heads.py)

    @property
    def replicas(self) -> int:
        return self.layers[0].replicas

    @property
    def head(self) -> Linear:
        return self.layers[-1]

    def reset_parameters(self, generators: list[torch.Generator | None]) -> None:
        for layer in self.layers:
            layer.reset_parameters(generators)
        for norm in self.norms:
            norm.reset_parameters(generators)

    def layer_parameters(self, i: int) -> list[nn.Parameter]:
        """Layer i's weight and bias, followed, for a hidden layer with a norm, by the norm's gain and bias."""
        params = [self.layers[i].weight, self.layers[i].bias]
        if self.norms and i < len(self.layers) - 1:
            params += [self.norms[i].weight, self.norms[i].bias]
        return params

    def frozen_layer(self, i: int, x: torch.Tensor, tensors: list[torch.Tensor]) -> torch.Tensor:
        """Layer i on x with `tensors` (shaped as layer_parameters(i), but with any number R' of replicas: the
        frozen heads fold their head axis into it, x [R', B, in]), as forward computes it."""
        h = replica_linear(x, tensors[0], tensors[1])
        if i == len(self.layers) - 1:
            return h
        if self.norms:
            h = layer_norm(h, tensors[2], tensors[3], self.norms[i].eps)
        return self.act(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        starts = self.frozen_starts()
        inputs = {}  # the input of each layer a frozen head starts at
        for i, (layer, group) in enumerate(zip(self.layers, self.groups)):
            if i in starts:
                inputs[i] = x
            h = layer(x)
            if self.norms:
                h = self.norms[i](h)
            x = self.act(h)
            # The tap: methods and metrics read the latest activations, always as [R, B, U] ([R, B, U, 2]
            # for paired units: a view of x whose last axis holds relu(h), relu(-h)).
            tap = x.unflatten(-1, (2, h.shape[-1])).transpose(-1, -2) if self.paired else x
            group.activation = (tap if h.dim() > 2 else tap.unsqueeze(0)).detach()
        inputs[len(self.layers) - 1] = x
        return self.add_frozen_heads(self.layers[-1](x), inputs)
