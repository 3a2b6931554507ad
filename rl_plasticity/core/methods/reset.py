"""The reset family: re-initialise part of each network, at every task switch or every N steps.

`what` chooses the part:
- `head`: the output layer (Continual ImageNet starts every task with a fresh 2-way head; the "head
  resetting" learner of class-incremental CIFAR);
- `last_layers`: the last `last_layers` layers of each network (resetting the last layers, as studied by
  Nikishin et al., 2022, "The primacy bias in deep reinforcement learning"); needs a network that lists its
  layers as a chain (`net.layers`: the MLP and the ConvNet do; the ResNet's layers branch);
- `network`: every layer, batch-norm statistics included: the network "retrained from scratch" at every
  increment that class-incremental CIFAR compares the others with;
- `injection`: plasticity injection (Nikishin, Oh, Ostrovski, Lyle, Pascanu, Dabney, Barreto, 2023,
  "Deep reinforcement learning with plasticity injection", Eq. 1): the head's current function is frozen
  and a fresh head is added minus a frozen copy of itself, h(x) = h_old(x) + h_new(x) - h_new0(x), so the
  output is unchanged at the moment of injection and the new head's parameters start learning from a fresh
  init. For a linear head the frozen part is one linear map, (W_old - W_new0) x + (b_old - b_new0), kept by
  the layer (`Linear.frozen`) and added to its output; later injections add to it. The paper injects into
  the last layers of its Atari agents' value network; here it is the output layer of each network.

`init: fresh` redraws the weights from each layer's own init distribution (biases 0, or their own
distribution where the layer has one); `zero` sets weights and biases to 0 (the official Continual
ImageNet head: lop/imagenet/single_expr.py multiplies the head by 0 at the start of every task).

Every re-initialised parameter also gets a fresh optimizer state (moments and step count), exactly as a
new parameter would, and the other methods forget what they knew of units whose incoming weights were
re-initialised (CBP's ages, utilities and mean activations restart at 0). Parameters outside the networks'
layers (PPO's log-std) are left alone. `when: steps` counts optimizer steps (PPO: minibatch updates).
"""

from __future__ import annotations

import torch
from torch import nn

from rl_plasticity.config import OneOf, Range
from rl_plasticity.core.methods.base import PlasticityMethod, output_layer
from rl_plasticity.core.units import ParamUnits, rows

WHAT = ("head", "last_layers", "network", "injection")

# The `reset` config section: its defaults and rules, declared here only.
DEFAULTS = {"enabled": False, "what": "head", "last_layers": 2, "init": "fresh", "when": "task_switch",
            "every": 100_000}
RULES = {"what": OneOf(*WHAT), "last_layers": Range(low=1), "init": OneOf("fresh", "zero"),
         "when": OneOf("task_switch", "steps"), "every": Range(low=1)}


class Reset(PlasticityMethod):
    name, label, defaults, rules = "reset", "reset", DEFAULTS, RULES

    def __init__(self, nets: list[nn.Module], groups: list, optimizer, generators, what: str = DEFAULTS["what"],
                 last_layers: int = DEFAULTS["last_layers"], init: str = DEFAULTS["init"],
                 when: str = DEFAULTS["when"], every: int = DEFAULTS["every"]):
        self.check(locals())
        if not nets:
            raise ValueError("reset needs the networks it resets; build the learner with nets=[...]")
        self.nets, self.groups, self.optimizer, self.generators = list(nets), groups, optimizer, generators
        self.what, self.init, self.when, self.every = what, init, when, every
        if what == "last_layers":
            for net in self.nets:
                stack = getattr(net, "layers", None)
                if stack is None or getattr(net, "residual", False):
                    raise ValueError(f"reset what=last_layers needs a network whose layers form a chain; "
                                     f"{type(net).__name__} does not: use what=head or what=network")
                if last_layers > len(stack):
                    raise ValueError(f"reset last_layers ({last_layers}) exceeds the {len(stack)} layers of "
                                     f"{type(net).__name__}")
        if init == "zero" and what not in ("head", "injection"):
            raise ValueError(f"reset init=zero with what={what} would leave every hidden unit identical (and "
                             f"dead); use init=fresh")
        if what == "injection" and not all(hasattr(output_layer(net), "frozen") for net in self.nets):
            raise ValueError("reset what=injection needs linear output layers (core.layers.Linear)")
        self.last_layers = last_layers
        self.steps, self.resets = 0, 0

    @classmethod
    def from_config(cls, section, target):
        return cls(target.nets, target.groups, target.optimizer, target.generators, **cls.options(section))

    @classmethod
    def needs(cls, section: dict) -> set[str]:
        return {"task_switch"} if section["when"] == "task_switch" else set()

    def layers(self, net: nn.Module) -> list[nn.Module]:
        """The layers of `net` this reset re-initialises."""
        if self.what == "network":
            return [m for m in net.modules() if any(True for _ in m.parameters(recurse=False))]
        layers = list(net.layers)[-self.last_layers:] if self.what == "last_layers" else [output_layer(net)]
        # A reset layer's units start afresh with their norm's gain and bias (net.norm: layer).
        return layers + [g.norm for g in self.groups if g.norm is not None and any(g.incoming is m for m in layers)]

    def after_step(self, learner=None) -> None:
        self.steps += 1
        if self.when == "steps" and self.steps % self.every == 0:
            self.apply(learner)

    def on_task_switch(self, learner=None) -> None:
        if self.when == "task_switch":
            self.apply(learner)

    @torch.no_grad()
    def apply(self, learner=None) -> None:
        """Reset now (at the chosen points `after_step` and `on_task_switch` call it)."""
        for net in self.nets:
            layers = self.layers(net)
            if self.what == "injection":
                self._inject(layers[0])
            elif self.what == "network" and self.init == "fresh":
                net.reset_parameters(self.generators)  # batch-norm statistics and all
            else:
                for layer in layers:
                    self._reinit(layer)
            for layer in layers:
                for p in layer.parameters(recurse=False):
                    self.optimizer.reset_units(ParamUnits(p, rows), torch.ones(p.shape[:2], dtype=torch.bool,
                                                                                device=p.device))
            self._forget(layers, learner)
        self.resets += 1

    def _reinit(self, layer: nn.Module) -> None:
        if self.init == "zero":
            for p in layer.parameters(recurse=False):
                p.zero_()
        else:
            layer.reset_parameters(self.generators)

    def _inject(self, head: nn.Module) -> None:
        old = (head.weight.clone(), head.bias.clone())
        self._reinit(head)
        delta = (old[0] - head.weight, old[1] - head.bias)  # h_old - h_new0, one linear map
        head.frozen = delta if head.frozen is None else tuple(f + d for f, d in zip(head.frozen, delta))

    def _forget(self, layers: list[nn.Module], learner) -> None:
        """Tell the learner's methods that the parameters of `layers`, and the units they compute, are new."""
        self.tell_params_reset(learner, [p for layer in layers for p in layer.parameters(recurse=False)])
        reset = {id(layer) for layer in layers}
        for group in self.groups:
            if id(group.incoming) in reset:
                everything = torch.ones(group.replicas, group.num_units, dtype=torch.bool,
                                        device=group.incoming.weight.device)
                self.tell_units_reset(learner, group, everything)

    def stats(self) -> dict[str, float]:
        return {"resets": float(self.resets)}

    def state_dict(self) -> dict:
        frozen = [None if output_layer(net).frozen is None else [t.clone() for t in output_layer(net).frozen]
                  for net in self.nets] if self.what == "injection" else []
        return {"steps": self.steps, "resets": self.resets, "frozen": frozen}

    def load_state_dict(self, sd: dict) -> None:
        self.steps, self.resets = int(sd["steps"]), int(sd["resets"])
        for net, frozen in zip(self.nets, sd["frozen"]):
            head = output_layer(net)
            head.frozen = None if frozen is None else tuple(t.to(head.weight.device, copy=True) for t in frozen)
