"""Plain PyTorch layers seen as the learner core's hidden-unit groups.

The core's plasticity methods (rl_plasticity/core/methods) see every tensor with a leading replica
axis, [R, U, ...]. A plain `nn.Linear` / `nn.Conv2d` holds one replica, so its tensors are viewed
with a replica axis of 1 (`t.unsqueeze(0)`, which shares memory: writes through the view change the
layer). A unit is an output feature of a linear layer or an output channel of a conv layer (Dohare
et al., Nature 2024, Methods: "a unit is a channel" for conv nets).

A group's activation is captured by a forward pre-hook on the layer that reads the units: its input
is exactly what the units feed forward (after activation, pooling, dropout), as the core's ConvNet
taps it. Only passes run with autograd on are captured, so acting or evaluating under
`torch.no_grad()` does not overwrite the activations of the batch that is being learned from.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rl_plasticity.core.conv import flattened_columns
from rl_plasticity.core.units import ParamUnits, UnitGroup, UnitView, columns

WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORM_LAYERS = (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

# A replaced unit's incoming weights are redrawn from U(+-g * sqrt(3 / fan_in)), g named here or given
# as a number; or `init` is a callable (layer, rows, generator) -> [rows, *layer.weight.shape[1:]].
INIT_GAINS = {
    "torch": 1 / math.sqrt(3),  # nn.Linear / nn.Conv*d's own reset: U(+-1/sqrt(fan_in))
    "lecun": 1.0,  # U(+-sqrt(3/fan_in)): the paper's PPO nets
    "kaiming": math.sqrt(2.0),  # He uniform for ReLU: the paper's supervised nets
}


def init_bound(layer: nn.Module, init) -> float:
    """The half-width g * sqrt(3 / fan_in) of the uniform init of `layer`'s weights, `init` a name or a gain."""
    if isinstance(init, str) and init not in INIT_GAINS:
        raise ValueError(f"unknown init {init!r}; expected one of {sorted(INIT_GAINS)}, a gain, or a callable")
    gain = INIT_GAINS[init] if isinstance(init, str) else float(init)
    # The same expression as the core's uniform_bound, so the bounds are bit-identical.
    return gain * math.sqrt(3.0 / layer.weight[0].numel())


def _with_replica(t: torch.Tensor) -> torch.Tensor:
    return t.unsqueeze(0)


def _compose(view: UnitView) -> UnitView:
    return lambda t: view(t.unsqueeze(0))


class LayerUnits:
    """A plain weight layer as the core sees an incoming layer: `.weight` [1, U, ...], `.bias` [1, U]
    or None, and `sample_weights` drawing fresh incoming weights from the layer's init distribution.
    `frozen` and `frozen_readers` are what plasticity injection keeps for the layer, as on the core's Linear
    (integrations/injection.py computes them)."""

    frozen: tuple[torch.Tensor, torch.Tensor] | None = None

    def __init__(self, layer: nn.Module, init="torch"):
        if getattr(layer, "groups", 1) != 1:
            raise ValueError("grouped convolutions are not supported as unit groups")
        self.layer = layer
        if callable(init):
            self.sampler, self.bound = init, None
        else:
            self.sampler, self.bound = None, init_bound(layer, init)

    @property
    def weight(self) -> torch.Tensor:
        return self.layer.weight.unsqueeze(0)

    @property
    def bias(self) -> torch.Tensor | None:
        return None if self.layer.bias is None else self.layer.bias.unsqueeze(0)

    def sample_weights(self, rows: int, generator: torch.Generator | None = None) -> torch.Tensor:
        w = self.layer.weight
        if self.sampler is not None:
            return self.sampler(self.layer, rows, generator).to(w.device, w.dtype)
        # Drawn on the CPU like the core's layers, so every device gets the same numbers.
        fresh = torch.empty(rows, *w.shape[1:], dtype=w.dtype)
        return fresh.uniform_(-self.bound, self.bound, generator=generator).to(w.device)

    # What the core's whole-layer methods (reset, hare & tortoise) ask of a layer: its own parameters, and a
    # fresh init. Plain parameters, no replica axis: those methods reset optimizer state through them.
    def parameters(self, recurse: bool = False) -> list[nn.Parameter]:
        return [p for p in (self.layer.weight, self.layer.bias) if p is not None]

    @torch.no_grad()
    def reset_parameters(self, generators: list[torch.Generator | None]) -> None:
        """Fresh weights from the init distribution (drawn as the core's layers draw them), bias 0."""
        self.layer.weight.copy_(self.sample_weights(self.layer.weight.shape[0], generators[0]))
        if self.layer.bias is not None:
            self.layer.bias.zero_()


class NormUnits:
    """A norm layer whose per-unit state belongs to the units: reset with them (weight 1, bias 0,
    running mean 0, running var 1)."""

    def __init__(self, norm: nn.Module, units: int):
        shape = getattr(norm, "normalized_shape", None)
        if shape is not None and tuple(shape) != (units,):
            raise ValueError(f"a LayerNorm over {tuple(shape)} does not normalise the {units} units one by one; "
                             "only LayerNorm(units) can belong to a unit group")
        self.norm, self.units = norm, units

    def parameters(self, recurse: bool = False) -> list[nn.Parameter]:
        return self.params()

    def reset_parameters(self, generators=None) -> None:
        """Every unit's norm state fresh (a reset of the layer the norm belongs to)."""
        self.reset_units(torch.ones(1, self.units, dtype=torch.bool))

    def params(self) -> list[nn.Parameter]:
        return [p for p in (self.norm.weight, self.norm.bias) if p is not None]

    @torch.no_grad()
    def reset_units(self, mask: torch.Tensor) -> None:
        units = mask[0]
        for t, value in ((self.norm.weight, 1.0), (self.norm.bias, 0.0),
                         (getattr(self.norm, "running_mean", None), 0.0),
                         (getattr(self.norm, "running_var", None), 1.0)):
            if t is not None:
                t[units] = value


class ModuleUnitGroup(UnitGroup):
    """A hidden-unit group made of plain modules: one incoming layer, one or more outgoing layers
    (e.g. SAC's mean and log-std heads read the same units), an optional norm."""

    def __init__(self, name: str, incoming: nn.Module, outgoing: list[nn.Module], norm: nn.Module | None = None,
                 init="torch"):
        self.name = name
        self.incoming = LayerUnits(incoming, init)
        self.outgoing_layers = list(outgoing)
        self.outgoing = self.outgoing_layers[0]
        self.norm = None if norm is None else NormUnits(norm, incoming.weight.shape[0])
        self.activation = None
        units = incoming.weight.shape[0]
        for out in self.outgoing_layers:
            if not isinstance(out, WEIGHT_LAYERS):
                raise ValueError(f"group {name!r}: the outgoing layer must be a Linear or Conv layer, "
                                 f"got {type(out).__name__}")
        # How each outgoing layer's [1, out, in...] weight shows the units' columns as [1, U, ...].
        self.outgoing_views: list[UnitView] = [
            flattened_columns(units) if isinstance(out, nn.Linear) and not isinstance(incoming, nn.Linear)
            else columns for out in self.outgoing_layers]
        for out, view in zip(self.outgoing_layers, self.outgoing_views):
            if view(_with_replica(out.weight.detach())).shape[1] != units:
                raise ValueError(f"group {name!r}: {type(out).__name__} reads {out.weight.shape[1]} inputs, which "
                                 f"do not match the {units} units of the incoming {type(incoming).__name__}")

    def _outgoing_columns(self) -> list[torch.Tensor]:
        return [view(_with_replica(out.weight)) for out, view in zip(self.outgoing_layers, self.outgoing_views)]

    def incoming_params(self) -> list[ParamUnits]:
        layer = self.incoming.layer
        params = [p for p in (layer.weight, layer.bias) if p is not None]
        if self.norm is not None:
            params += self.norm.params()
        return [ParamUnits(p, _with_replica) for p in params]

    def outgoing_params(self) -> list[ParamUnits]:
        return [ParamUnits(out.weight, _compose(view)) for out, view in zip(self.outgoing_layers, self.outgoing_views)]

    def mean_abs_outgoing(self) -> torch.Tensor:
        """[1, U]: mean |outgoing weight| over all the layers that read the units."""
        cols = [c.detach().abs().flatten(2) for c in self._outgoing_columns()]
        return torch.cat(cols, 2).mean(2) if len(cols) > 1 else cols[0].mean(2)

    @torch.no_grad()
    def add_to_outgoing_bias(self, values: torch.Tensor) -> None:
        """Fold a constant output of the units (values [1, U]) into every outgoing layer's bias.
        A constant channel read by a conv adds value x (sum of its kernel) to each output position."""
        for out, w in zip(self.outgoing_layers, self._outgoing_columns()):
            if out.bias is None:
                continue
            shift = (w * values.reshape(*values.shape, *[1] * (w.dim() - 2))).sum(1)  # [1, out, ...]
            _with_replica(out.bias).add_(shift.flatten(2).sum(2) if shift.dim() > 2 else shift)

    @torch.no_grad()
    def reinit(self, mask: torch.Tensor, generators: list[torch.Generator | None]) -> None:
        """Units in mask [1, U]: fresh incoming weights, bias 0, norm reset, outgoing weights 0."""
        idx = mask[0].nonzero().flatten()
        if len(idx):
            self.incoming.layer.weight[idx] = self.incoming.sample_weights(len(idx), generators[0])
        if self.incoming.layer.bias is not None:
            self.incoming.layer.bias[mask[0]] = 0.0
        if self.norm is not None:
            self.norm.reset_units(mask)
        for w in self._outgoing_columns():
            w[mask] = 0.0

    def capture(self, features: torch.Tensor) -> None:
        """Keep the units' activations from the outgoing layer's input, as the core's [1, B, U, ...]."""
        units = self.num_units
        if isinstance(self.outgoing, nn.Linear):
            if not isinstance(self.incoming.layer, nn.Linear):  # a conv's channels, flattened
                features = features.reshape(features.shape[0], units, -1)
            elif features.dim() != 2:  # e.g. [B, T, U]: every position is a sample
                features = features.reshape(-1, features.shape[-1])
        if features.dim() < 2 or features.shape[1] != units:
            raise ValueError(f"group {self.name!r}: the outgoing layer's input has shape {tuple(features.shape)}, "
                             f"which does not hold the {units} units of the incoming layer")
        self.activation = features.detach().unsqueeze(0)
