"""Every method of the core's registry (rl_plasticity.core.methods.METHODS) built on a plain PyTorch model.

Each builder gives the core's own class what its `from_config` gets from the core's learner, made from
the user's model:
- unit groups (groups.py) for the methods on hidden units (CBP, ReDo) and for telling every method
  which units a reset re-initialised;
- the optimizer's per-unit state reset (optim.py), for every method that re-initialises weights;
- the parameters, viewed with a replica axis of 1 where a method reads per-replica shapes (SNP's noise,
  L2 Init's penalty) and plain where it resets them whole (hare & tortoise);
- the model seen as a core network (`ModelLayers`) for the methods on layers (reset, Parseval, weight
  clipping): its weight layers in module order, the last being the output layer;
- for SWR, every parameter of the model's layers with its init distribution (swr.py).

`check` refuses, at attach time, what a method cannot act on; the methods themselves are built later,
on the model's first pass (where its weights then are).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from rl_plasticity.core.methods import (ContinualBackprop, HareTortoise, L2Init, Parseval, ReDo, Reset,
                                        SelectiveWeightReinit, ShrinkPerturb, WeightClipping)
from rl_plasticity.integrations.groups import NORM_LAYERS, WEIGHT_LAYERS, LayerUnits
from rl_plasticity.integrations.injection import SequentialHeads, inject_into_output_layer, injection_problem
from rl_plasticity.integrations.swr import PlainSWR, swr_targets

# The methods that re-initialise weights, so reset the optimizer state of what they re-initialise (and those
# with a `reset_optimizer_state` option, when it is on).
NEEDS_OPTIMIZER = {"cbp", "redo", "reset"}
# The methods that act on hidden-unit groups.
NEEDS_UNITS = {"cbp", "redo"}


class _WholeNorm:
    """A norm layer that belongs to no unit group, as a whole-network reset sees it."""

    def __init__(self, norm: nn.Module):
        self.norm = norm

    def parameters(self, recurse: bool = False) -> list[nn.Parameter]:
        return list(self.norm.parameters(recurse=False))

    def reset_parameters(self, generators=None) -> None:
        self.norm.reset_parameters()  # gain 1, shift 0, running statistics fresh


class ModelLayers:
    """A plain model as the core's layer methods see a network: `layers` (its weight layers in module
    order; a hidden layer is the same LayerUnits object as its unit group's, so a reset tells CBP/ReDo
    which units are new), `head` (the last layer: the output layer), `modules()` and `reset_parameters`
    (what a whole-network reset re-initialises: every layer, then every norm)."""

    def __init__(self, model: nn.Module, groups: list, init):
        shared = {id(g.incoming.layer): g.incoming for g in groups}
        self.layers = [shared[id(m)] if id(m) in shared else LayerUnits(m, init)
                       for m in model.modules() if isinstance(m, WEIGHT_LAYERS)]
        self.head = self.layers[-1] if self.layers else None
        in_groups = {id(g.norm.norm) for g in groups if g.norm is not None}
        self.norms = [g.norm for g in groups if g.norm is not None] + [
            _WholeNorm(m) for m in model.modules() if isinstance(m, NORM_LAYERS) and id(m) not in in_groups]

    def modules(self) -> list:
        return [*self.layers, *self.norms]

    def reset_parameters(self, generators) -> None:
        for m in self.modules():
            m.reset_parameters(generators)


@dataclass
class Attachment:
    """What the methods of one `Plasticity` act on."""

    model: nn.Module
    params: list[nn.Parameter]
    groups: list
    optimizer: Any  # the object methods call reset_units on (optim.unit_resetter), or None
    generators: list[torch.Generator]
    init: Any
    handles: list = field(default_factory=list)  # hooks the methods put on the model (plasticity injection)
    _layers: ModelLayers | None = field(default=None, repr=False)

    def layers(self) -> ModelLayers:
        if self._layers is None:
            self._layers = ModelLayers(self.model, self.groups, self.init)
        return self._layers


def _hidden_layers(a: Attachment, what: str) -> ModelLayers:
    layers = a.layers()
    if len(layers.layers) < 2:
        raise ValueError(f"{what} acts on hidden layers (every weight layer but the output layer), and "
                         f"{type(a.model).__name__} has {len(layers.layers)} Linear/Conv layer(s)")
    return layers


def check(name: str, options: dict, a: Attachment) -> None:
    """Refuse a method the model cannot take (its options are checked by torch_api.check_options)."""
    if name in NEEDS_UNITS and not a.groups:
        raise ValueError("CBP and ReDo need at least one hidden layer: no unit groups were declared")
    if name == "reset":
        what, k = options.get("what", Reset.defaults["what"]), options.get("last_layers", Reset.defaults["last_layers"])
        if not a.layers().layers:
            raise ValueError(f"reset found no Linear/Conv layer in {type(a.model).__name__}")
        if what == "injection" and injection_problem(a.model, a.layers(), k):
            raise ValueError(f"reset what='injection': {injection_problem(a.model, a.layers(), k)}")
        if what in ("last_layers", "injection") and k > len(a.layers().layers):
            raise ValueError(f"reset last_layers ({k}) exceeds the {len(a.layers().layers)} Linear/Conv layers "
                             f"of {type(a.model).__name__}")
    if name == "parseval":
        _hidden_layers(a, "Parseval regularisation")
    if name == "weight_clipping":
        if not a.layers().layers:
            raise ValueError(f"weight clipping found no Linear/Conv layer in {type(a.model).__name__}")
        if callable(a.init):
            raise ValueError("weight clipping clips each layer to kappa times its init bound, which a callable "
                             "init does not tell: pass init as a name ('torch', 'lecun', 'kaiming') or a gain")
    if name == "swr":
        resample = options.get("reinit", SelectiveWeightReinit.defaults["reinit"]) == "resample"
        if resample and callable(a.init):
            raise ValueError("swr reinit='resample' redraws weights from U(+-bound) of the layer's init, which a "
                             "callable init does not tell: pass init as a name ('torch', 'lecun', 'kaiming') or a "
                             "gain, or use reinit='mean'")
        if not swr_targets(a.model, "torch" if callable(a.init) else a.init):
            raise ValueError(f"swr found no Linear/Conv/norm layer with parameters in {type(a.model).__name__}")


def check_together(names: list[str], options: dict[str, dict]) -> None:
    """Refuse methods that cannot act together on a plain model."""
    if options.get("reset", {}).get("what") == "injection":
        for name in ("cbp", "redo"):
            if name in names:
                raise ValueError(f"reset what='injection' and {name} cannot act together on a plain model: {name} "
                                 "would have to remove a replaced unit from the frozen heads too, which only the "
                                 "core's nets keep (rl-plasticity train configs take them together)")


def _reset_net(a: Attachment, o: dict):
    """The net the reset method acts on: the model's layers, which injection also computes frozen parts for."""
    if o.get("what") != "injection":
        return a.layers()
    if o.get("last_layers", Reset.defaults["last_layers"]) == 1:
        inject_into_output_layer(a.layers(), a.handles)
        return a.layers()
    return SequentialHeads(a.model, a.layers(), a.handles)


def _views(params: list[nn.Parameter], detach: bool) -> list[torch.Tensor]:
    """The params with a replica axis of 1, sharing memory (writes through them change the model)."""
    return [(p.detach() if detach else p).unsqueeze(0) for p in params]


# Section name -> builder (attachment, options) -> the core's method object.
BUILDERS: dict[str, Callable[[Attachment, dict], Any]] = {
    "cbp": lambda a, o: ContinualBackprop(a.groups, a.optimizer, a.generators, **o),
    "redo": lambda a, o: ReDo(a.groups, a.optimizer, a.generators, **o),
    "snp": lambda a, o: ShrinkPerturb(_views(a.params, detach=True), a.generators, **o),
    "reset": lambda a, o: Reset([_reset_net(a, o)], a.groups, a.optimizer, a.generators, **o),
    # Views kept with autograd: the penalty's gradient flows through them into the parameters.
    "l2_init": lambda a, o: L2Init(_views(a.params, detach=False), **o),
    "parseval": lambda a, o: Parseval([_hidden_layers(a, "Parseval regularisation")], **o),
    "swr": lambda a, o: PlainSWR(a.model, a.optimizer, a.generators, a.init, **o),
    "weight_clipping": lambda a, o: WeightClipping([a.layers()], **o),
    "hare_tortoise": lambda a, o: HareTortoise(a.params, a.optimizer, [a.model], **o),
}
