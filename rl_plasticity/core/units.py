"""Hidden-unit groups: the one view of a network that every plasticity method and metric uses.

A group is one layer of hidden units: the layer that computes them (incoming), the layer that reads
them (outgoing), an optional norm layer, and a tap holding their latest activations. Methods never
touch a network's modules directly; they go through the group, so CBP, ReDo and the metrics work on
any network that can describe its groups.

Every tensor is seen with a leading replica axis and the unit axis second: [R, U, ...].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

UnitView = Callable[[torch.Tensor], torch.Tensor]


def rows(t: torch.Tensor) -> torch.Tensor:
    """A unit's incoming weights/bias are rows of the tensor: already [R, U, ...]."""
    return t


def columns(t: torch.Tensor) -> torch.Tensor:
    """A unit's outgoing weights are a column of the next layer's [R, out, U] weight."""
    return t.transpose(1, 2)


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
    outgoing: nn.Module  # has .weight whose unit axis `columns` exposes, and .bias
    norm: nn.Module | None = None
    activation: torch.Tensor | None = field(default=None, repr=False)  # latest [R, B, U, ...], detached

    @property
    def num_units(self) -> int:
        return self.incoming.weight.shape[1]

    @property
    def replicas(self) -> int:
        return self.incoming.weight.shape[0]

    def incoming_params(self) -> list[ParamUnits]:
        return [ParamUnits(self.incoming.weight, rows), ParamUnits(self.incoming.bias, rows)]

    def outgoing_params(self) -> list[ParamUnits]:
        return [ParamUnits(self.outgoing.weight, columns)]

    def all_params(self) -> list[ParamUnits]:
        return self.incoming_params() + self.outgoing_params()

    def mean_abs_incoming(self) -> torch.Tensor:
        """[R, U]: mean |incoming weight| of each unit."""
        return self.incoming.weight.detach().abs().flatten(2).mean(2)

    def mean_abs_outgoing(self) -> torch.Tensor:
        """[R, U]: mean |outgoing weight| of each unit."""
        return columns(self.outgoing.weight.detach()).abs().flatten(2).mean(2)

    @torch.no_grad()
    def add_to_outgoing_bias(self, values: torch.Tensor) -> None:
        """Fold a constant output of the units (values [R, U]) into the next layer's bias."""
        self.outgoing.bias += (columns(self.outgoing.weight) * values.unsqueeze(2)).sum(1)

    @torch.no_grad()
    def reinit(self, mask: torch.Tensor, generators: list[torch.Generator | None]) -> None:
        """Give the units in mask [R, U] fresh incoming weights (the layer's own init), bias 0, outgoing 0."""
        for r in mask.any(1).nonzero().flatten().tolist():
            idx = mask[r].nonzero().flatten()
            self.incoming.weight[r, idx] = self.incoming.sample_weights(len(idx), generators[r])
        self.incoming.bias[mask] = 0.0
        columns(self.outgoing.weight)[mask] = 0.0
