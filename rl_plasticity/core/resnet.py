"""ResNet-18 for 32x32 images (CIFAR style: 3x3 stem, no max-pool) with batch norm, on the learner core.

Which units plasticity methods may replace: only the inner conv of each basic block. A block computes
    h = relu(bn1(conv1(x)))         <- one ChannelGroup: incoming conv1, norm bn1, outgoing conv2
    y = relu(bn2(conv2(h)) + shortcut(x))
The channels of h are read by conv2 alone, so replacing one is exactly "fresh incoming kernel, norm
reset, outgoing block zero". The channels of y (and of the stem) form the residual stream: every
later block adds to them and reads them, so they have no single outgoing layer and are never replaced.
That gives 8 groups (2 blocks x 4 stages); the stem, the second convs, the shortcuts and the head
train by backprop only (and shrink-and-perturb / L2 act on all parameters).

`width` scales every stage (64 in the standard net; smaller for quick CPU runs). The penultimate
features (after global average pooling) are kept in `features` for rank metrics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rl_plasticity.core.conv import BatchNorm, ChannelGroup, Conv2d
from rl_plasticity.core.layers import Linear, uniform_bound


def _conv(c_in: int, c_out: int, k: int, stride: int = 1) -> Conv2d:
    return Conv2d(c_in, c_out, k, bound=uniform_bound(c_in * k * k, "kaiming", "relu"), stride=stride,
                  padding=k // 2, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, name: str, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = _conv(c_in, c_out, 3, stride), BatchNorm(c_out)
        self.conv2, self.bn2 = _conv(c_out, c_out, 3), BatchNorm(c_out)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(_conv(c_in, c_out, 1, stride), BatchNorm(c_out))
        self.group = ChannelGroup(name, self.conv1, self.conv2, norm=self.bn1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        self.group.activation = h.detach().unsqueeze(0)
        skip = x if self.shortcut is None else self.shortcut(x)
        return torch.relu(self.bn2(self.conv2(h)) + skip)


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 100, width: int = 64, in_channels: int = 3):
        super().__init__()
        self.stem, self.stem_bn = _conv(in_channels, width, 3), BatchNorm(width)
        blocks, c_in = [], width
        for stage, (mult, stride) in enumerate(zip((1, 2, 4, 8), (1, 2, 2, 2))):
            for b in range(2):
                blocks.append(BasicBlock(f"block{stage}.{b}", c_in, width * mult, stride if b == 0 else 1))
                c_in = width * mult
        self.blocks = nn.ModuleList(blocks)
        self.head = Linear(c_in, num_classes, bound=uniform_bound(c_in, "kaiming", "linear"))
        self.groups = [block.group for block in blocks]
        self.layers = [m for m in self.modules() if isinstance(m, (Conv2d, Linear))]
        self.features: torch.Tensor | None = None

    def reset_parameters(self, generators: list[torch.Generator | None]) -> None:
        for m in self.modules():
            if isinstance(m, (Conv2d, Linear, BatchNorm)):
                m.reset_parameters(generators)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem_bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        self.features = x.detach()
        return self.head(x)
