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
  "Deep reinforcement learning with plasticity injection", NeurIPS, Eq. (1)). The paper separates the network
  into an encoder phi and a head h_theta; at the injection it freezes the head's parameters theta and creates
  two copies of freshly initialised parameters theta': one frozen (theta'_0 here) and one that learns; the
  output becomes h_theta(phi(x)) + h_theta'(phi(x)) - h_theta'_0(phi(x)) (its Figure 2), unchanged at the
  moment of injection, with as many trainable parameters as before; the encoder keeps learning.
  Here the head is the last `last_layers` = k layers of each network (default 2) and phi(x) is the input of
  the first of them. k >= 2 needs a net that keeps frozen heads (core/frozen_heads.py): the MLP, whose head may
  span all its layers, and the ConvNet, whose head may span its fully connected layers (k <= len(fcs): its
  convs are the encoder; the paper's own case, a conv encoder and an fc head). The ResNet's layers branch and
  are refused. The live head is re-initialised in place (the hidden layers' LayerNorm gain and bias too, with
  `net.norm: layer`), and a frozen copy of the old head (+) and of the fresh one (-) are kept on the net
  (`net.frozen_heads`) and computed on the same input as the live head; the gradient reaches the encoder
  through all three. Every later injection adds two more frozen heads: a forward pass does the arithmetic of
  2 extra heads per injection so far, though in one batched pass per layer (the heads are stacked,
  core/frozen_heads.py). An encoder unit that CBP or ReDo later replaces reaches the output through
  none of the three (core/units.py). With `init: zero` (Continual ImageNet's default head reset) only the
  new head's output layer is zeroed and its hidden layers are drawn fresh (zeroed, their units would all be
  identical and dead); the fresh head then computes 0, so h_new0 is the zero function and is not kept: each
  such injection adds one frozen head, the old one.
  k = 1 keeps the frozen part as one linear map, (W_old - W_new0) x + (b_old - b_new0), in the output layer
  (`Linear.frozen`; any net with a linear output layer); later injections add to it. With plain SGD and no
  weight decay this is exactly equivalent to no injection: the output depends only on the sum
  W = W_new + (W_old - W_new0), whose gradient is the gradient of W_new, so W follows the same trajectory;
  only the head's optimizer state (reset here) and weight decay's target (W_new, not W) differ. Hence the
  default k = 2, whose head has a hidden nonlinear layer: there the fresh head is a different function of
  its parameters, not the old one re-parametrised.

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
from rl_plasticity.core.frozen_heads import FrozenHeads
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
        if what == "injection" and last_layers > 1:
            for net in self.nets:
                name = type(net).__name__
                if not isinstance(net, FrozenHeads):
                    why = "its layers branch" if getattr(net, "residual", False) else "it keeps no frozen heads"
                    raise ValueError(f"reset what=injection with last_layers={last_layers} needs a net whose last "
                                     f"layers form a chain that frozen heads can copy (an MLP, or the ConvNet's "
                                     f"fully connected layers); {name} is not one ({why}): use last_layers=1 to "
                                     f"inject into its output layer")
                if last_layers > net.max_head_layers:
                    raise ValueError(f"reset last_layers ({last_layers}) exceeds the {net.max_head_layers} layers of "
                                     f"{name} that what=injection can copy into frozen heads{net.head_note}; use "
                                     f"last_layers <= {net.max_head_layers}")
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
        if what == "injection" and last_layers == 1 and not all(hasattr(output_layer(net), "frozen")
                                                                for net in self.nets):
            raise ValueError("reset what=injection needs linear output layers (core.layers.Linear)")
        self.last_layers = last_layers
        # the last `last_layers` layers of each net's chain, rather than its output layer alone
        self.chained = what == "last_layers" or (what == "injection" and last_layers > 1)
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
        layers = list(net.layers)[-self.last_layers:] if self.chained else [output_layer(net)]
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
            if self.what == "injection" and self.last_layers == 1:
                self._inject_linear(layers[0])
            elif self.what == "injection":
                self._inject(net, layers)
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

    def _inject_linear(self, head: nn.Module) -> None:
        old = (head.weight.clone(), head.bias.clone())
        self._reinit(head)
        delta = (old[0] - head.weight, old[1] - head.bias)  # h_old - h_new0, one linear map
        head.frozen = delta if head.frozen is None else tuple(f + d for f, d in zip(head.frozen, delta))

    def _later_heads(self, net: FrozenHeads, starts) -> None:
        """Refuse frozen heads that start after this injection's first layer: their input is computed by layers
        it re-initialises, so the output would not stay unchanged (they come from an injection into fewer last
        layers, e.g. a run resumed with a larger last_layers)."""
        later = sorted({s for s in starts if s > len(net.layers) - self.last_layers})
        if later:
            raise ValueError(f"reset what=injection with last_layers={self.last_layers}: {type(net).__name__} keeps "
                             f"frozen heads of an injection into its last {len(net.layers) - later[0]} layers, which "
                             f"read a layer this injection re-initialises; keep last_layers <= "
                             f"{len(net.layers) - later[-1]}")

    def _inject(self, net: FrozenHeads, layers: list[nn.Module]) -> None:
        start = len(net.layers) - self.last_layers
        self._later_heads(net, net.frozen_starts())
        old = [p.detach().clone() for p in net.head_parameters(start)]
        output = net.layers[-1]
        if output.frozen is not None:  # a linear map frozen by an output-layer injection: part of the old head
            old[-2] += output.frozen[0]
            old[-1] += output.frozen[1]
            output.frozen = None
        for layer in layers:
            if layer is output:
                self._reinit(layer)  # init=zero: a zero output layer, the official Continual ImageNet head
            else:
                layer.reset_parameters(self.generators)  # hidden layers (and their norms) are always fresh
        heads = [*net.frozen_heads, (1.0, start, old)]
        if self.init != "zero":  # with a zero output layer h_new0 is the zero function: nothing to subtract
            heads.append((-1.0, start, [p.detach().clone() for p in net.head_parameters(start)]))
        net.set_frozen_heads(heads)

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
        injection = self.what == "injection"
        frozen = [None if output_layer(net).frozen is None else [t.clone() for t in output_layer(net).frozen]
                  for net in self.nets] if injection else []
        heads = [net.frozen_heads_state() if isinstance(net, FrozenHeads) else [] for net in self.nets] \
            if injection else []
        return {"steps": self.steps, "resets": self.resets, "frozen": frozen, "heads": heads}

    def load_state_dict(self, sd: dict) -> None:
        self.steps, self.resets = int(sd["steps"]), int(sd["resets"])
        for net, frozen in zip(self.nets, sd["frozen"]):
            head = output_layer(net)
            head.frozen = None if frozen is None else tuple(t.to(head.weight.device, copy=True) for t in frozen)
        for net, heads in zip(self.nets, sd.get("heads", [])):  # absent from checkpoints of k = 1 only
            if isinstance(net, FrozenHeads):
                if self.last_layers > 1:
                    self._later_heads(net, [int(h["start"]) for h in heads])
                net.load_frozen_heads_state(heads)
            elif heads:
                raise ValueError(f"the saved frozen heads of plasticity injection need a net that keeps them (an MLP "
                                 f"or a ConvNet), not {type(net).__name__}")
