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
them into the layers before `start`. They write no activation tap.

Storage and speed: the heads that share a `start` are kept stacked (`head_stacks`, one `HeadStack` per start):
each of their tensors is one slice of a tensor with a leading head axis H ([H, R, out, in] for a weight), and
the tensors that `frozen_heads` lists are views of those slices. A forward pass computes all the heads of a
start at once, layer by layer, with the head axis folded into the replica axis (the input [R, B, in] repeated
to [H*R, B, in], the weights seen as [H*R, out, in]: one batched matmul per layer, whatever H), then sums the
H outputs weighted by the heads' signs (+-1). Each injection still adds two heads' arithmetic, but no longer
two passes of small kernel launches: the cost per layer is one launch. The stack is the only copy, so an
in-place edit of a head's tensors (core/units.py, below) is what the next forward computes; numpy views of it
(agents/ppo.py acts through them) see the edit too. `set_frozen_heads` rebuilds the stacks (and bumps
`frozen_heads_version`, for whoever keeps views of them).

What the mixin shares: the stacks, the validation of the heads' shapes and starts, their state (save and
restore, used by the reset method's checkpoint: a list of per-head dicts), their sum into the output, and the
`frozen_readers` bookkeeping: the first layer of every frozen head reads the same units as the live layer
`start` does, so `net.layers[start].frozen_readers` lists those (weight, bias) pairs, views of the stack, and a
method that replaces one of the units (CBP, ReDo: core/units.py) zeroes its columns there too (through the unit
group's own `outgoing_view`, so a conv channel read through a flatten loses its whole spatial block) and folds
its mean into their biases.

What each net supplies:
- `first_head_layer`: the first layer a head may start at (the MLP: 0; the ConvNet: its first fully connected
  layer, the convs being the encoder) and `head_note`, a few words on that limit for error messages;
- `layer_parameters(i)`: the parameters of layer i, in the order a frozen head keeps them;
- `frozen_layer(i, x, tensors)`: layer i on its input x [R', B, in] computed with `tensors` ([R', ...] each) in
  place of those parameters, its activation included (none for the output layer); R' = H*R here;
- in its __init__, after its layers: `self.set_frozen_heads([])`;
- in its forward: the input of each layer a head starts at (`frozen_starts()`), handed to `add_frozen_heads`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

FrozenHead = tuple[float, int, list[torch.Tensor]]  # (sign, start, tensors shaped as head_parameters(start))


@dataclass(eq=False)
class HeadStack:
    """The H frozen heads that start at layer `start`: tensors[j] [H, *shape of head_parameters(start)[j]]."""

    start: int
    signs: torch.Tensor  # [H], +-1
    tensors: list[torch.Tensor]  # the storage: every head's tensors are views of these
    folded: list[torch.Tensor]  # the same tensors with the head axis folded into the replica axis: [H*R, ...]

    @property
    def heads(self) -> int:
        return self.signs.shape[0]


class FrozenHeads:
    """Mixin for a net whose last layers form a chain (`self.layers`) that injection can copy into frozen heads.

    The net calls `self.set_frozen_heads([])` in its __init__ and defines `first_head_layer`, `layer_parameters`
    and `frozen_layer` (see the module docstring)."""

    frozen_heads: list[FrozenHead]
    head_stacks: list[HeadStack]
    frozen_heads_version: int = 0  # bumped by every set_frozen_heads
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
        """Replace the frozen heads by `heads` [(sign, start, tensors shaped as head_parameters(start))]: their
        tensors are copied into new stacks, and `frozen_heads` lists views of them (in the order given)."""
        name = type(self).__name__
        for sign, start, tensors in heads:
            if not self.first_head_layer <= start < len(self.layers):
                raise ValueError(f"a frozen head of {name} must start at one of its layers {self.first_head_layer}.."
                                 f"{len(self.layers) - 1}, not at {start}{self.head_note}")
            shapes = [tuple(p.shape) for p in self.head_parameters(start)]
            if sign not in (1.0, -1.0) or [tuple(t.shape) for t in tensors] != shapes:
                raise ValueError(f"a frozen head of {name} from layer {start} needs sign +-1 and tensors shaped "
                                 f"{shapes}")
        for layer in self.layers[self.first_head_layer:]:
            layer.frozen_readers = []
        self.head_stacks, views = [], {}
        for start in sorted({start for _, start, _ in heads}):
            members = [(i, sign, tensors) for i, (sign, s, tensors) in enumerate(heads) if s == start]
            tensors = [torch.stack([t[j].detach() for _, _, t in members]) for j in range(len(members[0][2]))]
            signs = torch.tensor([sign for _, sign, _ in members], dtype=tensors[0].dtype, device=tensors[0].device)
            self.head_stacks.append(HeadStack(start, signs, tensors, [t.flatten(0, 1) for t in tensors]))
            for h, (i, _, _) in enumerate(members):
                views[i] = [t[h] for t in tensors]
            self.layers[start].frozen_readers = [(tensors[0][h], tensors[1][h]) for h in range(len(members))]
        self.frozen_heads = [(float(sign), start, views[i]) for i, (sign, start, _) in enumerate(heads)]
        self.frozen_heads_version += 1

    def frozen_starts(self) -> set[int]:
        """The layers whose input a forward pass must keep for the frozen heads."""
        return {stack.start for stack in self.head_stacks}

    def by_layer(self, start: int, tensors: list[torch.Tensor]) -> list[tuple[int, list[torch.Tensor]]]:
        """A head's (or stack's) tensors, in head_parameters(start)'s order, split per layer: [(i, layer i's)]."""
        split, at = [], 0
        for i in range(start, len(self.layers)):
            n = len(self.layer_parameters(i))
            split.append((i, tensors[at:at + n]))
            at += n
        return split

    def stacked_heads(self, x: torch.Tensor, stack: HeadStack) -> torch.Tensor:
        """The H heads of `stack` on their input x [R, B, in] (or [B, in] with one replica), all at once:
        [H, R, B, out] (or [H, B, out]). No activation tap is written."""
        single = x.dim() == 2
        if single:
            x = x.unsqueeze(0)
        replicas = x.shape[0]
        # Every head reads the same input: repeat it along a head axis folded into the replica axis.
        x = x.expand(stack.heads, *x.shape).reshape(stack.heads * replicas, *x.shape[1:])
        for i, tensors in self.by_layer(stack.start, stack.folded):
            x = self.frozen_layer(i, x, tensors)
        x = x.unflatten(0, (stack.heads, replicas))
        return x[:, 0] if single else x

    def add_frozen_heads(self, out: torch.Tensor, inputs: dict[int, torch.Tensor]) -> torch.Tensor:
        """out plus (or minus) every frozen head, each on inputs[start], the input of the layer it starts at."""
        for stack in self.head_stacks:
            # sum over h of sign_h * head_h: one contraction over the head axis
            out = out + torch.tensordot(stack.signs, self.stacked_heads(inputs[stack.start], stack), dims=1)
        return out

    def frozen_heads_state(self) -> list[dict]:
        """The frozen heads as plain data for a checkpoint (copies), in the order `frozen_heads` lists them."""
        return [{"sign": sign, "start": start, "tensors": [t.clone() for t in tensors]}
                for sign, start, tensors in self.frozen_heads]

    def load_frozen_heads_state(self, state: list[dict]) -> None:
        """Restore `frozen_heads_state()`'s output, on the device of the net's parameters."""
        device = self.layers[-1].weight.device
        self.set_frozen_heads([(float(h["sign"]), int(h["start"]), [t.to(device) for t in h["tensors"]])
                               for h in state])
