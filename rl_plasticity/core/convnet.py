"""The small ConvNet of the paper's Continual ImageNet experiment, with its hidden units as groups.

conv 5x5 (32) -> pool -> conv 3x3 (64) -> pool -> conv 3x3 (128) -> pool -> flatten -> fc 128 -> fc 128
-> head, ReLU everywhere, 2x2 max-pool after each conv. Five unit groups: the three convs (a unit
is a channel; the last conv's outgoing weights are its spatial block of fc1) and the two fc layers.
A conv group's activation tap is its pooled output, the tensor the next layer reads.

Init (`init`): "pytorch_default", as the official code (lop/nets/conv_net.py keeps torch's nn.Conv2d /
nn.Linear defaults): weights and biases U(+-1/sqrt(fan_in)); CBP redraws a unit's weights from the
same U(+-1/sqrt(fan_in)) with bias 0, as lop/algos/convGnT.py does with get_layer_bound. "kaiming":
weights U(+-sqrt(6/fan_in)) (gain 1 for the head), biases 0: about 2.45x wider than the default.

Plasticity injection (Nikishin et al. 2023, Eq. (1); core/methods/reset.py) into the last k >= 2 layers keeps
its frozen heads on the ConvNet (`frozen_heads`, core/frozen_heads.py, shared with the MLP). The paper's split
fits this net: the conv stack is (part of) the encoder and the fully connected layers are the head, so a frozen
head spans at most the fc layers (k <= len(fcs)); its layers are linear + ReLU (none after the output layer),
and its input is the input of the fc layer it starts at: the flattened output of the last conv group when
k = len(fcs). Then the frozen heads read the conv channels through fc0's columns, and a channel that CBP or
ReDo replaces loses its whole spatial block in their first layers too (the group's `flattened_columns` view).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rl_plasticity.core.conv import ChannelGroup, Conv2d, flattened_columns
from rl_plasticity.core.frozen_heads import FrozenHeads
from rl_plasticity.core.layers import Linear, pytorch_default_bound, replica_linear, uniform_bound
from rl_plasticity.core.units import UnitGroup

CONV_INITS = ("pytorch_default", "kaiming")


def _bounds(fan_in: int, init: str, activation: str) -> dict:
    """Weight and bias bounds of one layer of a ConvNet under `init` (see the module docstring)."""
    if init == "pytorch_default":
        b = pytorch_default_bound(fan_in)
        return {"bound": b, "bias_bound": b}
    if init == "kaiming":
        return {"bound": uniform_bound(fan_in, "kaiming", activation)}
    raise ValueError(f"unknown ConvNet init {init!r}; expected one of {CONV_INITS}")


class ConvNet(FrozenHeads, nn.Module):
    """Conv encoder and fully connected head (see the module docstring); frozen heads start at an fc layer."""

    head_note = " (the fully connected layers; the convs are the encoder)"

    def __init__(self, num_classes: int = 2, channels=(32, 64, 128), kernels=(5, 3, 3), hidden=(128, 128),
                 image_size: int = 32, in_channels: int = 3, init: str = "kaiming"):
        super().__init__()
        convs, size, c_in = [], image_size, in_channels
        for c_out, k in zip(channels, kernels):
            convs.append(Conv2d(c_in, c_out, k, **_bounds(c_in * k * k, init, "relu")))
            size, c_in = (size - k + 1) // 2, c_out
        if size < 1:
            raise ValueError(f"images of {image_size}x{image_size} are too small for kernels {kernels}")
        sizes = [c_in * size * size, *hidden, num_classes]
        fcs = [Linear(sizes[i], sizes[i + 1], **_bounds(sizes[i], init, "relu" if i < len(hidden) else "linear"))
               for i in range(len(sizes) - 1)]
        self.convs, self.fcs = nn.ModuleList(convs), nn.ModuleList(fcs)
        self.layers = [*convs, *fcs]
        self.groups: list[UnitGroup] = [
            ChannelGroup(f"conv{i}", convs[i], convs[i + 1]) for i in range(len(convs) - 1)]
        self.groups.append(ChannelGroup(f"conv{len(convs) - 1}", convs[-1], fcs[0],
                                        outgoing_view=flattened_columns(c_in)))
        self.groups += [UnitGroup(f"fc{i}", fcs[i], fcs[i + 1]) for i in range(len(fcs) - 1)]
        self.first_head_layer = len(convs)  # frozen heads copy fc layers only
        self.set_frozen_heads([])  # plasticity injection into k >= 2 layers (core/frozen_heads.py)

    @property
    def head(self) -> Linear:
        return self.fcs[-1]

    def reset_parameters(self, generators: list[torch.Generator | None]) -> None:
        for layer in self.layers:
            layer.reset_parameters(generators)

    def layer_parameters(self, i: int) -> list[nn.Parameter]:
        """Layer i's weight and bias (a frozen head copies fc layers only: i >= first_head_layer)."""
        return [self.layers[i].weight, self.layers[i].bias]

    def frozen_layer(self, i: int, x: torch.Tensor, tensors: list[torch.Tensor]) -> torch.Tensor:
        """fc layer i on x with `tensors` (weight, bias), as forward computes it: linear, then ReLU unless it is
        the output layer. The frozen heads fold their head axis into the replica axis: x [H, B, in], tensors
        [H, ...]."""
        h = replica_linear(x, tensors[0], tensors[1])
        return h if i == len(self.layers) - 1 else torch.relu(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        taps = iter(self.groups)
        for conv in self.convs:
            x = F.max_pool2d(torch.relu(conv(x)), 2)
            next(taps).activation = x.detach().unsqueeze(0)
        x = x.flatten(1)
        starts = self.frozen_starts()
        inputs = {}  # the input of each fc layer a frozen head starts at
        for i, fc in enumerate(self.fcs[:-1], start=len(self.convs)):
            if i in starts:
                inputs[i] = x
            x = torch.relu(fc(x))
            next(taps).activation = x.detach().unsqueeze(0)
        inputs[len(self.layers) - 1] = x
        return self.add_frozen_heads(self.head(x), inputs)


class LinearClassifier(nn.Module):
    """The linear baseline: one linear layer on the flattened image; no hidden units."""

    def __init__(self, in_features: int, num_classes: int = 2):
        super().__init__()
        self.linear = Linear(in_features, num_classes, bound=uniform_bound(in_features, "kaiming", "linear"))
        self.layers = [self.linear]
        self.groups: list[UnitGroup] = []

    @property
    def head(self) -> Linear:
        return self.linear

    def reset_parameters(self, generators) -> None:
        self.linear.reset_parameters(generators)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))
