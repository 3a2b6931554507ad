"""The toolkit's plasticity metrics on an ordinary PyTorch model: one flat dict of floats per measurement.

    m = rl_plasticity.Measure(model)              # snapshots the initial weights (distance from init)
    ...  training ...
    writer_or_logger.log(m(inputs))               # {"0/dormant_fraction": 0.12, "0/stable_rank": 41.0, ...}
    rl_plasticity.measure(model, inputs)          # the same, once, without distance from init

The formulas are the learner core's own (rl_plasticity/core/metrics.py), applied to the model's layers
seen with a replica axis of 1, exactly as the core's networks present theirs. Per hidden layer (a weight
layer whose units an activation feeds to a later weight layer, found by integrations/finder.py or
declared), on the input batch:
- dormant_fraction: share of units active (> 0) on at most 1% of the inputs (Dohare et al., Nature 2024);
- tau_dormant_fraction: share of units whose ReDo score is <= tau (Sokar et al. 2023, Definitions 3.1-3.2);
- stable_rank: the smallest k whose top-k singular values of the [batch, units] features hold 99% of their
  sum (the loss-of-plasticity paper's definition); effective_rank: exp of the entropy of the normalised
  singular values (Roy & Vetterli 2007);
- feature_norm: mean over the inputs of the L2 norm of the layer's activation vector;
- grama_dormant_fraction: share of units whose GraMa score, the mean |gradient| of the unit's incoming
  weights relative to the layer's mean, is <= grama_tau (Liu, Obando-Ceron et al. 2025).
Per weight layer (hidden and output):
- mean_abs_weight; grad_norm (L2 norm of the weight's gradient); distance_from_init (L2 norm of the weights
  minus their initial values). Weights only, not biases, as the core measures them.

The gradient metrics read the gradient in each weight's `.grad` (what the latest backward pass left there;
the optimizer step does not change it), or the `grads` a caller passes; a layer without one is left out.
The model runs in eval mode during the measurement (no dropout, batch norm on its running statistics, which
the measurement therefore leaves untouched) and under torch.no_grad(); each module's mode is restored after.
Keys are "<module name>/<metric>", the names of `model.named_modules()`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from rl_plasticity.core.metrics import DistanceFromInit, gradient_metrics, probe_metrics
from rl_plasticity.core.units import UnitGroup
from rl_plasticity.integrations.finder import build_groups
from rl_plasticity.integrations.groups import WEIGHT_LAYERS

DORMANT = ("spatial_mean", "official")


class _Layer:
    """A plain weight layer as the core's metrics read one: `.weight` [1, ...], taken afresh at every
    measurement (so a model moved or loaded between measurements is read as it is then)."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.refresh()

    def refresh(self) -> None:
        self.weight = self.module.weight.detach().unsqueeze(0)

    def grad(self) -> torch.Tensor | None:
        g = self.module.weight.grad
        return None if g is None else g.detach().unsqueeze(0)


class _CoreNet:
    """The model as the core's metric functions see a network: `layers`, `groups` (core UnitGroups whose
    activations are captured from the model's layers during the call), and a call that runs the forward."""

    def __init__(self, layers: list[_Layer], groups: list, forward: Callable):
        self.layers = layers
        by_module = {id(layer.module): layer for layer in layers}
        self._plain = groups  # integrations.groups.ModuleUnitGroup: they know how to capture a layer's input
        self.groups = [UnitGroup(f"group{j}", by_module[id(g.incoming.layer)], by_module.get(id(g.outgoing)))
                       for j, g in enumerate(groups)]
        self._forward = forward

    def __call__(self, inputs: tuple) -> None:
        handles = [g.outgoing.register_forward_pre_hook(lambda m, args, g=g: g.capture(args[0])) for g in self._plain]
        try:
            self._forward(*inputs)
        finally:
            for h in handles:
                h.remove()
        for core, plain in zip(self.groups, self._plain):
            if plain.activation is None:
                raise RuntimeError(f"the forward pass never reached layer {plain.name!r}'s outgoing layer, so its "
                                   "units' activations were not seen: does the forward call run through it?")
            core.activation, plain.activation = plain.activation, None


def _check_tau(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


class Measure:
    """Every plasticity metric of `model`'s hidden and weight layers, as {"<layer>/<metric>": float}.

    groups: None to find the hidden layers automatically (integrations/finder.py), or declared as for
    `Plasticity` (pairs of module names, `UnitSpec`s; an empty list measures the weight layers only).
    layers: names of the weight layers to give weight metrics (mean |w|, gradient norm, distance from init);
    None for every Linear/Conv layer of the model.
    forward: what a measurement calls with the inputs (default: the model itself), e.g. an SB3 policy's
    `predict_values`; it must run through the measured layers.
    initial: the model's state_dict at initialisation (only its layers' weights are read), for distance
    from init; None takes the weights the model has now.
    dormant: "spatial_mean" (a conv unit's activation averaged over positions) or "official" (every
    (input, position) pair counts, the paper's CIFAR definition). tau: ReDo's threshold of the tau-dormant
    fraction (0: units that never activate); grama_tau: GraMa's threshold (0: units that get no gradient).

    `state_dict()` / `load_state_dict()` hold the initial weights, so a resumed run measures from the true init.
    """

    def __init__(self, model: nn.Module, *, groups=None, layers: Iterable[str] | None = None,
                 forward: Callable | None = None, initial: Mapping[str, torch.Tensor] | None = None,
                 dormant: str = "spatial_mean", tau: float = 0.0, grama_tau: float = 0.0):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if dormant not in DORMANT:
            raise ValueError(f"dormant must be one of {', '.join(DORMANT)}, got {dormant!r}")
        self.dormant, self.tau, self.grama_tau = dormant, _check_tau("tau", tau), _check_tau("grama_tau", grama_tau)
        self.model = model
        self.forward = model if forward is None else forward
        modules = dict(model.named_modules())
        weighted = [n for n, m in modules.items() if isinstance(m, WEIGHT_LAYERS)]
        names = weighted if layers is None else list(layers)
        for n in names:
            if n not in weighted:
                raise ValueError(f"{n!r} is not a Linear or Conv layer of {type(model).__name__}; its weight layers "
                                 f"are {weighted}")
        self.groups = build_groups(model, groups)
        # A hidden layer is always measured as a weight layer too.
        names += [g.name for g in self.groups if g.name not in names and g.name in weighted]
        self.layer_names = names
        self._layers = [_Layer(modules[n]) for n in names]
        self._names = {**{f"layer{i}": n for i, n in enumerate(names)}, **{f"group{j}": g.name
                                                                        for j, g in enumerate(self.groups)}}
        self.distance = DistanceFromInit(self._net())
        if initial is not None:
            self.load_initial(initial)

    def _net(self) -> _CoreNet:
        for layer in self._layers:
            layer.refresh()
        return _CoreNet(self._layers, self.groups, self.forward)

    def load_initial(self, initial: Mapping[str, torch.Tensor]) -> None:
        """Measure distance from these initial weights (a state_dict of the model, or of its layers' weights)."""
        missing = [f"{n}.weight" for n in self.layer_names if f"{n}.weight" not in initial]
        if missing:
            raise ValueError(f"initial weights lack {missing}: pass the model's state_dict() at initialisation")
        self.distance.load_state_dict([initial[f"{n}.weight"].detach().unsqueeze(0) for n in self.layer_names])

    def _keyed(self, values: Mapping[str, torch.Tensor]) -> dict[str, float]:
        out = {}
        for key, v in values.items():
            where, metric = key.split("/", 1)
            out[f"{self._names[where]}/{metric}"] = float(v[0])
        return out

    def __call__(self, *inputs, grads: Mapping[nn.Parameter, torch.Tensor] | None = None) -> dict[str, float]:
        """Measure on `inputs` (what the forward call takes, e.g. a batch [B, ...]). grads: each weight's
        gradient to measure (parameter -> tensor of its shape); None reads every weight's `.grad`."""
        return self.measure(*inputs, grads=grads)

    def measure(self, *inputs, grads: Mapping[nn.Parameter, torch.Tensor] | None = None,
                distance: bool = True) -> dict[str, float]:
        if not inputs:
            raise ValueError("no inputs to measure on: pass a batch, e.g. measure(x) with x of shape [B, ...]")
        net = self._net()
        training = {m: m.training for m in self.model.modules()}
        self.model.eval()
        try:
            out = self._keyed(probe_metrics(net, inputs, dormant=self.dormant, tau=self.tau))
        finally:
            for m, mode in training.items():
                m.training = mode
        if grads is None:
            found = {layer.weight: layer.grad() for layer in self._layers}
        else:
            found = {layer.weight: None if grads.get(layer.module.weight) is None
                     else grads[layer.module.weight].detach().unsqueeze(0) for layer in self._layers}
        found = {k: g for k, g in found.items() if g is not None}
        out.update(self._keyed(gradient_metrics(net, found, self.grama_tau)))
        if distance:
            out.update(self._keyed(self.distance()))
        return out

    def state_dict(self) -> dict:
        return {"initial": self.distance.state_dict(), "layers": list(self.layer_names)}

    def load_state_dict(self, state: dict) -> None:
        if list(state["layers"]) != self.layer_names:
            raise ValueError(f"saved measurement state is for layers {state['layers']}, not {self.layer_names}")
        self.distance.load_state_dict(state["initial"])


def measure(model: nn.Module, *inputs, initial: Mapping[str, torch.Tensor] | None = None,
            **options) -> dict[str, float]:
    """Every plasticity metric of `model` on `inputs`, once: {"<layer>/<metric>": float}. distance_from_init
    is included only when `initial` (the model's state_dict at initialisation) is given; for repeated
    measurements make a `Measure(model)` at initialisation instead. options: those of `Measure`."""
    m = Measure(model, initial=initial, **options)
    return m.measure(*inputs, distance=initial is not None)
