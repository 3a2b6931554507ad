"""Frozen heads of plasticity injection into the last k >= 2 layers, shared by the nets that keep them.

Plasticity injection (Nikishin, Oh, Ostrovski, Lyle, Pascanu, Dabney, Barreto, 2023, "Deep reinforcement
learning with plasticity injection", NeurIPS, Eq. (1) and Figure 2) turns a net's output h_theta(phi(x)) into
h_theta(phi(x)) + h_theta'(phi(x)) - h_theta'_0(phi(x)): the old head theta and a copy theta'_0 of the fresh
head's init are frozen, the fresh head theta' learns in place of the old one (core/methods/reset.py does the
injection). When the head is more than the output layer, the two frozen heads are whole little networks: this
module keeps them and computes them.

A net that mixes in `FrozenHeads` keeps `frozen_heads`: a list of (sign, start, tensors), each a frozen copy of
its layers start..L-1 (`start` indexes `net.layers`) computed on the input of layer `start`, as the net
computes its own layers, and added to (sign +1) or subtracted from (sign -1) its output. The tensors are plain
tensors, not parameters: no optimizer sees them and no gradient reaches them, while the gradient flows through
them into the layers before `start`. They write no activation tap. Each injection adds (up to) two heads, so a
forward pass costs two extra head passes per injection so far.

What the mixin shares: the list, the validation of the heads' shapes and starts, their state (save and
restore, used by the reset method's checkpoint), their sum into the output, and the `frozen_readers`
bookkeeping: the first layer of every frozen head reads the same units as the live layer `start` does, so
`net.layers[start].frozen_readers` lists those (weight, bias) pairs, and a method that replaces one of the
units (CBP, ReDo: core/units.py) zeroes its columns there too (through the unit group's own `outgoing_view`,
so a conv channel read through a flatten loses its whole spatial block) and folds its mean into their biases.

What each net supplies:
- `first_head_layer`: the first layer a head may start at (the MLP: 0; the ConvNet: its first fully connected
  layer, the convs being the encoder) and `head_note`, a few words on that limit for error messages;
- `layer_parameters(i)`: the parameters of layer i, in the order a frozen head keeps them;
- `frozen_layer(i, x, tensors)`: layer i on its input x computed with `tensors` in place of those parameters,
  its activation included (none for the output layer);
- in its forward: the input of each layer a head starts at (`frozen_starts()`), handed to `add_frozen_heads`.
"""

from __future__ import annotations

import torch
from torch import nn

FrozenHead = tuple[float, int, list[torch.Tensor]]  # (sign, start, tensors shaped as head_parameters(start))


class FrozenHeads:
    """Mixin for a net whose last layers form a chain (`self.layers`) that injection can copy into frozen heads.

    The net sets `self.frozen_heads = []` in its __init__ and defines `first_head_layer`, `layer_parameters`
    and `frozen_layer` (see the module docstring)."""

    frozen_heads: list[FrozenHead]
    first_head_layer: int = 0
    head_note: str = ""

    def layer_parameters(self, i: int) -> list[nn.Parameter]:
        raise NotImplementedError

    def frozen_layer(self, i: int, x: torch.Tensor, tensors: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    @property
    def max_head_layers(self) -> int:
        """How many last layers a frozen head can span."""
        return len(self.layers) - self.first_head_layer

    def head_parameters(self, start: int) -> list[nn.Parameter]:
        """The parameters of layers start..L-1 in the order a frozen head keeps them (layer_parameters of each)."""
        return [p for i in range(start, len(self.layers)) for p in self.layer_parameters(i)]

    def set_frozen_heads(self, heads: list[FrozenHead]) -> None:
        """Replace the frozen heads by `heads` [(sign, start, tensors shaped as head_parameters(start))]."""
        name = type(self).__name__
        for sign, start, tensors in heads:
            if not self.first_head_layer <= start < len(self.layers):
                raise ValueError(f"a frozen head of {name} must start at one of its layers {self.first_head_layer}.."
                                 f"{len(self.layers) - 1}, not at {start}{self.head_note}")
            shapes = [tuple(p.shape) for p in self.head_parameters(start)]
            if sign not in (1.0, -1.0) or [tuple(t.shape) for t in tensors] != shapes:
                raise ValueError(f"a frozen head of {name} from layer {start} needs sign +-1 and tensors shaped "
                                 f"{shapes}")
        self.frozen_heads = list(heads)
        for layer in self.layers[self.first_head_layer:]:
            layer.frozen_readers = []
        for _, start, tensors in self.frozen_heads:
            self.layers[start].frozen_readers.append((tensors[0], tensors[1]))

    def frozen_starts(self) -> set[int]:
        """The layers whose input a forward pass must keep for the frozen heads."""
        return {start for _, start, _ in self.frozen_heads}

    def frozen_head(self, x: torch.Tensor, start: int, tensors: list[torch.Tensor]) -> torch.Tensor:
        """Layers start..L-1 on their input x, computed with `tensors` as the net computes them with its
        parameters (no activation tap is written)."""
        at = 0
        for i in range(start, len(self.layers)):
            n = len(self.layer_parameters(i))
            x = self.frozen_layer(i, x, tensors[at:at + n])
            at += n
        return x

    def add_frozen_heads(self, out: torch.Tensor, inputs: dict[int, torch.Tensor]) -> torch.Tensor:
        """out plus (or minus) every frozen head, each on inputs[start], the input of the layer it starts at."""
        for sign, start, tensors in self.frozen_heads:
            head = self.frozen_head(inputs[start], start, tensors)
            out = out + head if sign > 0 else out - head
        return out

    def frozen_heads_state(self) -> list[dict]:
        """The frozen heads as plain data for a checkpoint (copies)."""
        return [{"sign": sign, "start": start, "tensors": [t.clone() for t in tensors]}
                for sign, start, tensors in self.frozen_heads]

    def load_frozen_heads_state(self, state: list[dict]) -> None:
        """Restore `frozen_heads_state()`'s output, on the device of the net's parameters."""
        device = self.layers[-1].weight.device
        self.set_frozen_heads([(float(h["sign"]), int(h["start"]), [t.to(device, copy=True) for t in h["tensors"]])
                               for h in state])
