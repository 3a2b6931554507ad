"""ResNet-18 for 32x32 images (CIFAR style: 3x3 stem, no max-pool) with batch norm, on the learner core.

Which units plasticity methods may replace (`groups`):

"inner": only the inner conv of each basic block. A block computes
    h = relu(bn1(conv1(x)))         <- one ChannelGroup: incoming conv1, norm bn1, outgoing conv2
    y = relu(bn2(conv2(h)) + shortcut(x))
The channels of h are read by conv2 alone, so replacing one is exactly "fresh incoming kernel, norm
reset, outgoing block zero". The channels of y (and of the stem) form the residual stream: every
later block adds to them and reads them, so they have no single outgoing layer and are never replaced.
That gives 8 groups (2 blocks x 4 stages); the stem, the second convs, the shortcuts and the head
train by backprop only (and shrink-and-perturb / L2 act on all parameters). Replacing a unit is then
exact: every layer that reads it gets a zero column, so the network's function changes only through
the unit's batch-norm reset.

"all": the 17 groups of the official code (lop/algos/res_gnt.py, ResGnT.get_weight_layers: every Conv2d
and the Linear in module order, skipping the shortcut convs): the stem conv and both convs of each block,
each with the batch norm behind it, its outgoing layer the next conv of that list (the head for the last
block's second conv), and its tap the tensor the official forward appends to its feature list: the stem
output, each block's inner activation and output, and, for the last block, the pooled features. A
residual-stream unit also reaches later layers through the shortcuts, which are not zeroed (as there).

Whatever `groups` is, `feature_taps()` gives those 17 tensors: the layers whose dormant units the
official post_run_analysis.py counts.

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


RESNET_GROUPS = ("all", "inner")


class BasicBlock(nn.Module):
    def __init__(self, name: str, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = _conv(c_in, c_out, 3, stride), BatchNorm(c_out)
        self.conv2, self.bn2 = _conv(c_out, c_out, 3), BatchNorm(c_out)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(_conv(c_in, c_out, 1, stride), BatchNorm(c_out))
        self.group = ChannelGroup(name, self.conv1, self.conv2, norm=self.bn1)
        self.output: torch.Tensor | None = None  # latest block output [1, B, C, H, W], detached

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        self.group.activation = h.detach().unsqueeze(0)
        skip = x if self.shortcut is None else self.shortcut(x)
        y = torch.relu(self.bn2(self.conv2(h)) + skip)
        self.output = y.detach().unsqueeze(0)
        return y


class ResNet18(nn.Module):
    residual = True  # its `layers` (every conv and the head) do not form a chain: no "last k layers"

    def __init__(self, num_classes: int = 100, width: int = 64, in_channels: int = 3, groups: str = "inner"):
        super().__init__()
        if groups not in RESNET_GROUPS:
            raise ValueError(f"unknown ResNet groups {groups!r}; expected one of {RESNET_GROUPS}")
        self.stem, self.stem_bn = _conv(in_channels, width, 3), BatchNorm(width)
        blocks, c_in = [], width
        for stage, (mult, stride) in enumerate(zip((1, 2, 4, 8), (1, 2, 2, 2))):
            for b in range(2):
                blocks.append(BasicBlock(f"block{stage}.{b}", c_in, width * mult, stride if b == 0 else 1))
                c_in = width * mult
        self.blocks = nn.ModuleList(blocks)
        self.head = Linear(c_in, num_classes, bound=uniform_bound(c_in, "kaiming", "linear"))
        self.group_layout = groups
        self.groups = [block.group for block in blocks] if groups == "inner" else self._official_groups()
        self.layers = [m for m in self.modules() if isinstance(m, (Conv2d, Linear))]
        self.features: torch.Tensor | None = None
        self.stem_output: torch.Tensor | None = None

    def _official_groups(self) -> list[ChannelGroup]:
        """The 17 groups of res_gnt.py's ResGnT, in its order (see the module docstring); a block's inner
        group is the block's own."""
        convs = [(self.stem, self.stem_bn, "stem", None)]
        for block in self.blocks:
            name = block.group.name
            convs += [(block.conv1, block.bn1, name, block.group), (block.conv2, block.bn2, f"{name}.out", None)]
        groups = []
        for i, (conv, bn, name, own) in enumerate(convs):
            outgoing = convs[i + 1][0] if i + 1 < len(convs) else self.head
            groups.append(own if own is not None else ChannelGroup(name, conv, outgoing, norm=bn))
        return groups

    def feature_taps(self) -> list[torch.Tensor]:
        """The 17 [1, B, C, ...] activations the official code records: stem, (inner, output) of each block
        with the last block's output replaced by the pooled features [1, B, C]."""
        taps = [self.stem_output]
        for block in self.blocks:
            taps += [block.group.activation, block.output]
        taps[-1] = self.features.unsqueeze(0)
        return taps

    def reset_parameters(self, generators: list[torch.Generator | None]) -> None:
        for m in self.modules():
            if isinstance(m, (Conv2d, Linear, BatchNorm)):
                m.reset_parameters(generators)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem_bn(self.stem(x)))
        self.stem_output = x.detach().unsqueeze(0)
        for block in self.blocks:
            x = block(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        self.features = x.detach()
        self._set_official_taps()
        return self.head(x)

    def _set_official_taps(self) -> None:
        """Point the stem and block-output groups (groups="all") at their tensors of feature_taps()."""
        if self.group_layout != "all":
            return
        for group, tap in zip(self.groups, self.feature_taps()):
            group.activation = tap
