"""Hidden-unit groups: the one view of a network that every plasticity method and metric uses.

A group is one layer of hidden units: the layer that computes them (incoming), the layer that reads
them (outgoing), an optional norm layer, and a tap holding their latest activations. Methods never
touch a network's modules directly; they go through the group, so CBP, ReDo and the metrics work on
any network that can describe its groups.

Every tensor is seen with a leading replica axis and the unit axis second: [R, U, ...].

A norm layer on the units (e.g. networks.LayerNorm) has per-unit gain and bias [R, U]: they belong to the
units' incoming parameters, so every method that resets a unit's incoming parameters (and their
optimizer state) resets them too, to gain 1 and bias 0.

A unit may feed the next layer more than one input: a CReLU unit feeds two, relu(h) and relu(-h), at
columns i and U + i of the next layer (`paired_columns`). Its tap is then [R, B, U, 2] (the halves as
a trailing axis, like a conv channel's positions), its outgoing weights are seen as [R, U, out, 2], and
the mean output the bias transfer needs is one per half, [R, U, 2] (`mean_shape`, `batch_mean`): one
mean for both halves cannot be folded into the next bias exactly, so `add_to_outgoing_bias` refuses it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

UnitView = Callable[[torch.Tensor], torch.Tensor]


def rows(t: torch.Tensor) -> torch.Tensor:
    """A unit's incoming weights/bias are rows of the tensor: already [R, U, ...]."""
    return t


def columns(t: torch.Tensor) -> torch.Tensor:
    """A unit's outgoing weights are a column of the next layer's [R, out, U] weight."""
    return t.transpose(1, 2)


def paired_columns(units: int) -> UnitView:
    """View a [R, out, 2U] weight read from concat(f(h), g(h)) of U units as [R, U, out, 2]: unit i's outgoing
    weights are columns i and U + i (a view: writing through it writes the weight)."""
    def view(t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(2, (2, units)).permute(0, 3, 1, 2)
    return view


@dataclass(eq=False)
class ParamUnits:
    """A parameter and how to view it (and any tensor shaped like it, e.g. optimizer state) as [R, U, ...]."""

    param: nn.Parameter
    view: UnitView

    def units(self, t: torch.Tensor | None = None) -> torch.Tensor:
        return self.view(self.param.data if t is None else t)


@dataclass(eq=False)
class UnitGroup:
    name: str
    incoming: nn.Module  # has .weight [R, U, ...], .bias [R, U], .sample_weights(n, generator)
    outgoing: nn.Module  # has .weight whose unit axis `outgoing_view` exposes, and .bias
    norm: nn.Module | None = None  # has .weight, .bias [R, U] and .reset_units(mask)
    activation: torch.Tensor | None = field(default=None, repr=False)  # latest [R, B, U, ...], detached
    outgoing_view: UnitView = columns  # the outgoing weight as [R, U, out, ...]
    mean_shape: tuple[int, ...] = ()  # trailing shape of one unit's mean output in the bias transfer

    @property
    def num_units(self) -> int:
        return self.incoming.weight.shape[1]

    @property
    def replicas(self) -> int:
        return self.incoming.weight.shape[0]

    def incoming_params(self) -> list[ParamUnits]:
        params = [ParamUnits(self.incoming.weight, rows)]
        if self.incoming.bias is not None:  # a conv followed by batch norm has none
            params.append(ParamUnits(self.incoming.bias, rows))
        if self.norm is not None:  # the norm's per-unit gain and bias belong to the units too
            params += [ParamUnits(self.norm.weight, rows), ParamUnits(self.norm.bias, rows)]
        return params

    def outgoing_params(self) -> list[ParamUnits]:
        return [ParamUnits(self.outgoing.weight, self.outgoing_view)]

    def all_params(self) -> list[ParamUnits]:
        return self.incoming_params() + self.outgoing_params()

    def mean_abs_incoming(self) -> torch.Tensor:
        """[R, U]: mean |incoming weight| of each unit."""
        return self.incoming.weight.detach().abs().flatten(2).mean(2)

    def outgoing_weight(self) -> torch.Tensor:
        """The weight the next layer reads the units with, as [R, U, out, ...]: its trained weight, plus the
        frozen map plasticity injection added to it (layers.Linear.frozen), if any."""
        # Injection into the last k >= 2 layers: the units also feed frozen heads (`frozen_readers`); their
        # utility and score see the trained head only, the one that still learns to use them.
        frozen = getattr(self.outgoing, "frozen", None)
        weight = self.outgoing.weight.detach()
        return self.outgoing_view(weight if frozen is None else weight + frozen[0])

    def mean_abs_outgoing(self) -> torch.Tensor:
        """[R, U]: mean |outgoing weight| of each unit (over both columns of a paired unit)."""
        return self.outgoing_weight().abs().flatten(2).mean(2)

    def batch_mean(self, activation: torch.Tensor) -> torch.Tensor:
        """[R, B, U, ...] -> [R, U, *mean_shape]: the batch mean of each unit's outputs, as the bias transfer
        takes it (one number per unit; one per half for paired units)."""
        act = activation.flatten(3) if activation.dim() > 3 else activation.unsqueeze(3)
        return act.mean(1) if self.mean_shape else act.mean((1, 3))

    @torch.no_grad()
    def add_to_outgoing_bias(self, values: torch.Tensor) -> None:
        """Fold a constant output of the units (values [R, U, *mean_shape]) into the next layer's bias."""
        if tuple(values.shape[2:]) != tuple(self.mean_shape):
            expected = ", ".join(["R", "U", *map(str, self.mean_shape)])
            raise ValueError(f"group {self.name!r}: the bias transfer needs the units' mean outputs shaped "
                             f"[{expected}] (one per half of a paired unit), got {list(values.shape)}")
        if self.outgoing.bias is None:  # a conv followed by batch norm, which re-centres its output anyway
            return
        w = self.outgoing_weight()  # [R, U, out, ...]
        v = values.unsqueeze(2)  # [R, U, 1, *mean_shape], then one axis per remaining axis of w (positions)
        v = v.reshape(*v.shape, *[1] * (w.dim() - v.dim()))

        def shift(w: torch.Tensor) -> torch.Tensor:  # [R, out]
            s = (w * v).sum(1)  # [R, out, ...]
            return s.flatten(2).sum(2) if s.dim() > 2 else s

        self.outgoing.bias += shift(w)
        # Frozen heads that read the units (injection into k >= 2 layers) get the same transfer into their
        # first layer's bias: the mean input the units gave them stays, as it does for the trained layer.
        for weight, bias in getattr(self.outgoing, "frozen_readers", ()):
            bias += shift(self.outgoing_view(weight))

    @torch.no_grad()
    def reinit(self, mask: torch.Tensor, generators: list[torch.Generator | None]) -> None:
        """Give the units in mask [R, U] fresh incoming weights (the layer's own init), bias 0, their norm's
        gain 1 and bias 0, and outgoing weights 0 (both columns of a paired unit)."""
        for r in mask.any(1).nonzero().flatten().tolist():
            idx = mask[r].nonzero().flatten()
            self.incoming.weight[r, idx] = self.incoming.sample_weights(len(idx), generators[r])
        if self.incoming.bias is not None:
            self.incoming.bias[mask] = 0.0
        if self.norm is not None:
            self.norm.reset_units(mask)
        self.outgoing_view(self.outgoing.weight)[mask] = 0.0
        frozen = getattr(self.outgoing, "frozen", None)
        if frozen is not None:  # a new unit reaches the output through no frozen weight either
            self.outgoing_view(frozen[0])[mask] = 0.0
        for weight, _ in getattr(self.outgoing, "frozen_readers", ()):  # nor through a frozen head
            self.outgoing_view(weight)[mask] = 0.0
