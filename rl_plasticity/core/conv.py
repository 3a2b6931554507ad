"""Convolutional layers, batch norm and channel groups for the learner core.

A unit of a conv layer is an output channel. Parameters keep the core's leading replica axis, so
units, optimizer state and plasticity methods see every tensor as [R, U, ...] as they do for MLPs:
conv weight [R, C_out, C_in, k, k], bias [R, C_out], norm weight/bias/running stats [R, C].
Conv nets run one replica (R = 1, one seed per process): their forward takes plain [B, C, H, W]
inputs and calls F.conv2d on replica 0; activation taps are [1, B, C, H, W].

How a channel's outgoing weights are seen depends on the layer that reads it:
- another conv: weight [R, out, C, k, k] -> `columns` -> [R, C, out, k, k];
- a linear layer behind a flatten: weight [R, out, C*H*W] -> `flattened_columns(C)` ->
  [R, C, out, H*W], so a channel's outgoing weights are its whole spatial block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rl_plasticity.core.layers import uniform_like
from rl_plasticity.core.units import UnitGroup, UnitView


def _one_replica(replicas: int) -> None:
    if replicas != 1:
        raise ValueError(f"conv layers run one replica per process (R = 1), got replicas={replicas}")


class Conv2d(nn.Module):
    """Conv layer with weights from U(+-bound), bias 0 or from U(+-bias_bound) when bias_bound > 0 (or no
    bias, for a conv followed by batch norm). A unit redrawn by a plasticity method gets bias 0."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bound: float, stride: int = 1,
                 padding: int = 0, bias: bool = True, replicas: int = 1, bias_bound: float = 0.0):
        super().__init__()
        _one_replica(replicas)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.padding, self.bound, self.bias_bound = stride, padding, bound, bias_bound
        self.weight = nn.Parameter(torch.zeros(1, out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(1, out_channels)) if bias else None

    @property
    def fan_in(self) -> int:
        return self.in_channels * self.kernel_size ** 2

    def sample_weights(self, rows: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Fresh incoming kernels for `rows` channels, drawn on the CPU so any device gets the same numbers."""
        w = torch.empty(rows, self.in_channels, self.kernel_size, self.kernel_size, dtype=self.weight.dtype)
        return w.uniform_(-self.bound, self.bound, generator=generator).to(self.weight.device)

    @torch.no_grad()
    def reset_parameters(self, generators: list[torch.Generator | None]) -> None:
        self.weight[0] = self.sample_weights(self.out_channels, generators[0])
        if self.bias is not None and self.bias_bound > 0:
            self.bias[0] = uniform_like(self.bias[0], self.bias_bound, generators[0])
        elif self.bias is not None:
            self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias[0]
        return F.conv2d(x, self.weight[0], bias, stride=self.stride, padding=self.padding)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, k={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.bias is not None}, bound={self.bound:.4g}")


class BatchNorm(nn.Module):
    """Batch norm over channels (dim 1) of [B, C, ...] inputs, with the core's replica axis on its state."""

    def __init__(self, channels: int, momentum: float = 0.1, eps: float = 1e-5, replicas: int = 1):
        super().__init__()
        _one_replica(replicas)
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(1, channels))
        self.bias = nn.Parameter(torch.zeros(1, channels))
        self.register_buffer("running_mean", torch.zeros(1, channels))
        self.register_buffer("running_var", torch.ones(1, channels))

    @torch.no_grad()
    def reset_units(self, mask: torch.Tensor) -> None:
        """Channels in mask [R, C] become fresh: weight 1, bias 0, running mean 0, running var 1."""
        self.weight[mask] = 1.0
        self.bias[mask] = 0.0
        self.running_mean[mask] = 0.0
        self.running_var[mask] = 1.0

    def reset_parameters(self, generators=None) -> None:
        self.reset_units(torch.ones_like(self.running_mean, dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Views of replica 0: F.batch_norm updates the running statistics in place, through the view.
        return F.batch_norm(x, self.running_mean[0], self.running_var[0], self.weight[0], self.bias[0],
                            self.training, self.momentum, self.eps)


def flattened_columns(channels: int) -> UnitView:
    """View a linear layer's [R, out, C*H*W] weight, fed by a flattened [C, H, W] map, as [R, C, out, H*W]."""
    def view(t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(2, (channels, -1)).transpose(1, 2)
    return view


@dataclass(eq=False)
class ChannelGroup(UnitGroup):
    """A unit group whose layers may be convs: conv or linear incoming, conv or flatten-linear outgoing
    (`flattened_columns`), an optional batch norm on the units (reset with them), and an incoming layer that
    may lack a bias. UnitGroup handles all of these; the name says which networks build it."""
