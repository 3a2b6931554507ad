"""Selective weight reinitialisation (Hernandez-Garcia, Dohare, Luo & Sutton, 2025) on a plain PyTorch model.

The method is the core's (core/methods/swr.py, which states the utilities |w * g| or |w|, the proportional and
threshold selections and the re-initialisation): this module only shows it the model. Every parameter tensor
of every Linear/Conv layer (weights redrawn from U(+-bound) of the attachment's `init`, biases set to 0, as the
plain layers' other resets do) and of every LayerNorm/BatchNorm (weight 1, bias 0) is viewed with a replica
axis of 1; a model with parameters in any other kind of module is refused, as the core refuses one. The
gradient is the one `backward()` left in `p.grad` for this step (the core catches the learner's with hooks),
read at `step()`, after the optimizer step, as the paper's code does. A re-initialised weight's optimizer
state is reset element by element through the optimizer's per-unit reset (each weight a unit).
"""

from __future__ import annotations

import torch
from torch import nn

from rl_plasticity.core.methods.swr import SelectiveWeightReinit
from rl_plasticity.core.units import ParamUnits
from rl_plasticity.integrations.groups import NORM_LAYERS, WEIGHT_LAYERS, init_bound


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.view(1, -1)  # a view: writes through it reach the state tensor


class ElementResetter:
    """The core's `reset_elements(view, mask)` on the model's own parameter, through `reset_units`."""

    def __init__(self, resetter, views: dict[int, nn.Parameter]):
        self.resetter, self.views = resetter, views

    def reset_elements(self, view: torch.Tensor, mask: torch.Tensor) -> None:
        self.resetter.reset_units(ParamUnits(self.views[id(view)], _flat), mask.reshape(1, -1))


def swr_targets(model: nn.Module, init) -> list[tuple[nn.Parameter, float, float]]:
    """(parameter, init mean, init half-width) of every parameter of `model`'s layers."""
    targets = []
    for name, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        if not own:
            continue
        if isinstance(module, WEIGHT_LAYERS):
            targets += [(p, 0.0, init_bound(module, init) if kind == "weight" else 0.0) for kind, p in own]
        elif isinstance(module, NORM_LAYERS):
            targets += [(p, 1.0 if kind == "weight" else 0.0, 0.0) for kind, p in own]
        else:
            raise ValueError(f"swr cannot re-initialise the parameters of {name or 'the model'!r} "
                             f"({type(module).__name__}: its init distribution is unknown); it handles Linear, "
                             f"Conv1d/2d/3d, LayerNorm and BatchNorm layers")
    return targets


class PlainSWR(SelectiveWeightReinit):
    """The core's SWR on a plain model's parameters (replica axis of 1)."""

    def __init__(self, model: nn.Module, optimizer, generators, init, **options):
        self._plain = swr_targets(model, init)
        self._views = [p.unsqueeze(0) for p, _, _ in self._plain]
        resetter = None if optimizer is None else ElementResetter(
            optimizer, {id(v): p for v, (p, _, _) in zip(self._views, self._plain)})
        super().__init__([model], resetter, generators, **options)

    def find_targets(self, nets):
        return [(v, mean, half) for v, (_, mean, half) in zip(self._views, self._plain)]

    def gradient_hooks(self) -> list:
        return []  # backward() leaves the gradient in p.grad: after_step reads it

    def after_step(self, learner=None) -> None:
        self.grads = [None if p.grad is None else p.grad.unsqueeze(0) for p, _, _ in self._plain]
        super().after_step(learner)
