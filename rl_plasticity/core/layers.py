"""Layers that hold R independent replicas (one per seed) of their parameters.

A replica axis in front of every parameter lets many seeds of a small problem train as one batched
computation: weight [R, out, in], bias [R, out], input [R, B, in]. Replicas never mix, so replica r
computes exactly what a network trained alone would. Problems with one seed use R = 1 and may feed
plain [B, in] inputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Gain of the Kaiming family per activation (He et al.): the scale that keeps activations' variance.
_GAINS = {"relu": math.sqrt(2.0), "leaky_relu": math.sqrt(2.0 / (1 + 0.01**2)), "tanh": 5.0 / 3,
          "sigmoid": 1.0, "linear": 1.0, "elu": math.sqrt(2.0), "swish": math.sqrt(2.0)}

INITS = ("lecun", "kaiming")


def uniform_bound(fan_in: int, init: str, activation: str) -> float:
    """Half-width of the uniform init: LeCun U(+-sqrt(3/fan_in)); Kaiming scales it by the activation's gain."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; expected one of {INITS}")
    gain = _GAINS[activation] if init == "kaiming" else 1.0
    return gain * math.sqrt(3.0 / fan_in)


def pytorch_default_bound(fan_in: int) -> float:
    """Half-width of torch.nn.Linear / Conv2d's default init, for weights and biases alike: U(+-1/sqrt(fan_in)).

    (kaiming_uniform_ with a=sqrt(5) gives sqrt(6 / (1 + 5)) * sqrt(3 / fan_in) / sqrt(3) = 1/sqrt(fan_in);
    the bias bound is 1/sqrt(fan_in) too.) The official Continual ImageNet ConvNet keeps these defaults.
    """
    return 1.0 / math.sqrt(fan_in)


def uniform_like(t: torch.Tensor, bound: float, generator: torch.Generator | None) -> torch.Tensor:
    """U(+-bound) numbers shaped like t, drawn on the CPU (where the generators live) and moved to t's device."""
    return torch.empty(t.shape, dtype=t.dtype).uniform_(-bound, bound, generator=generator).to(t.device)


def replica_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x [R, B, in] (or [B, in] with one replica) -> [R, B, out] (or [B, out])."""
    if x.dim() == 2:  # [B, in] with a single replica: the plain (and fastest) path
        # squeeze, not [0]: its backward is a view, where indexing's would fill and copy a new gradient
        return F.linear(x, weight.squeeze(0), bias.squeeze(0))
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


class Linear(nn.Module):
    """Replica-batched linear layer whose weights come from U(+-bound) and biases start at 0
    (or from U(+-bias_bound) when bias_bound > 0, as in PyTorch's default init).

    The layer remembers its bound so that plasticity methods can redraw a unit's incoming weights
    from the layer's own init distribution (a redrawn unit's bias is 0, as in the official CBP).
    `frozen` is None or a (weight, bias) pair of untrained tensors whose linear map is added to the output:
    the function that plasticity injection into this one layer freezes (core/methods/reset.py).
    `zero_inputs_from` is None or the index from which every input is known to be zero (an observation padded
    with zeros, as the official Ant-v3's 84 contact entries): the forward then reads only the inputs before it.
    The weights keep their full width (the init bound, resets, L2 and metrics see the whole layer), their
    gradient there is exactly 0 as before, and the result is the same: a zero input adds nothing to a sum.
    `frozen_readers` lists the (weight, bias) first layers of frozen heads that read this layer's input too
    (injection into the last k >= 2 layers, core/frozen_heads.py): a method that re-initialises an
    input unit zeroes its column there as well (core/units.py). The layer's forward never uses them.
    """

    def __init__(self, in_features: int, out_features: int, bound: float, replicas: int = 1,
                 bias_bound: float = 0.0):
        super().__init__()
        self.in_features, self.out_features, self.bound, self.replicas = in_features, out_features, bound, replicas
        self.bias_bound = bias_bound
        self.weight = nn.Parameter(torch.zeros(replicas, out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(replicas, out_features))
        self.frozen: tuple[torch.Tensor, torch.Tensor] | None = None
        self.frozen_readers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.zero_inputs_from: int | None = None

    def sample_weights(self, rows: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Fresh incoming weights for `rows` units of one replica, from the layer's init distribution."""
        # Drawn on the CPU (where the generators live), so every device gets the same numbers.
        w = torch.empty(rows, self.in_features, dtype=self.weight.dtype)
        return w.uniform_(-self.bound, self.bound, generator=generator).to(self.weight.device)

    @torch.no_grad()
    def reset_parameters(self, generators: list[torch.Generator | None]) -> None:
        for r, g in enumerate(generators):
            self.weight[r] = self.sample_weights(self.out_features, g)
        if self.bias_bound > 0:  # drawn after all weights, so bias_bound = 0 leaves the weights' draws as they were
            for r, g in enumerate(generators):
                self.bias[r] = uniform_like(self.bias[r], self.bias_bound, g)
        else:
            self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, frozen, live = self.weight, self.frozen, self.zero_inputs_from
        if live is not None:
            x, weight = x[..., :live], weight[..., :live]
            frozen = None if frozen is None else (frozen[0][..., :live], frozen[1])
        out = replica_linear(x, weight, self.bias)
        return out if frozen is None else out + replica_linear(x, *frozen)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, replicas={self.replicas}, bound={self.bound:.4g}"
