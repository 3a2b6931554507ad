"""The interface every plasticity method implements: a few hook points in the training loop.

The learner calls them in this order: `after_loss` (may add a penalty to the loss), the optimizer
step, `after_step` (the latest activations are in each group's tap), and, when the problem says so,
`after_epoch` (end of a rollout's update or a supervised epoch) and `on_task_switch`. A method that
re-initialises units or whole parameters tells every method (`tell_units_reset`, `tell_params_reset`), whose
`forget_units` / `forget_params` drop what they knew of them (CBP's ages, the tortoise's copy).

A method also owns its config section, once: `name` (the section's key in a problem's config and the
method's key in statistics and checkpoints), `defaults` (the section, `enabled: False` first; the
constructor's keyword defaults read theirs from it), `rules` (Rules from rl_plasticity.config, keyed
by the section's keys; the config validation and the constructor's checks both use them) and
`from_config`, which builds the method from its resolved section and the `Target` it acts on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rl_plasticity.config import Rule, check_options
from rl_plasticity.core.conv import Conv2d
from rl_plasticity.core.layers import Linear


@dataclass(eq=False)
class Target:
    """What a learner's methods act on.

    params: every trained parameter (replica axis first); groups: the hidden-unit groups; optimizer: the
    learner's optimizer (methods that re-initialise weights reset its state there); generators: one per
    replica, for the methods' randomness; nets: the whole networks (PPO: actor and critic), for methods
    that act on layers or on a network as a whole (each net has `reset_parameters(generators)`; see
    `net_layers` and `output_layer` below for how its layers are found).
    """

    params: list[nn.Parameter]
    groups: list
    optimizer: Any
    generators: list[torch.Generator | None]
    nets: list[nn.Module] = field(default_factory=list)


def net_layers(net: nn.Module) -> list[nn.Module]:
    """A network's weight layers in order: `net.layers` where it lists them (MLP, ConvNet, ResNet18,
    LinearClassifier), else its Linear and Conv2d modules in module order."""
    layers = getattr(net, "layers", None)
    if layers is None:
        layers = [m for m in net.modules() if isinstance(m, (Linear, Conv2d))]
    return list(layers)


def output_layer(net: nn.Module) -> nn.Module | None:
    """The layer that computes the network's output: `net.head` where it names one, else its last layer."""
    head = getattr(net, "head", None)
    if head is not None:
        return head
    layers = net_layers(net)
    return layers[-1] if layers else None


class PlasticityMethod:
    name = "method"
    label = "method"  # how the constructor's error messages name the method
    defaults: dict[str, Any] = {"enabled": False}
    rules: dict[str, Rule] = {}

    @classmethod
    def options(cls, section: dict) -> dict:
        """The constructor's keyword arguments from a resolved config section (all but `enabled`)."""
        return {k: v for k, v in section.items() if k != "enabled"}

    @classmethod
    def from_config(cls, section: dict, target: Target):
        """The method built from its resolved, enabled section; None when it has nothing to act on.
        This default suits methods that act on unit groups; a method on parameters overrides it."""
        if not target.groups:
            return None
        return cls(target.groups, target.optimizer, target.generators, **cls.options(section))

    @classmethod
    def needs(cls, section: dict) -> set[str]:
        """The points besides every optimizer step at which this configuration acts: "epoch" and/or
        "task_switch". A problem that never signals one of them refuses the configuration."""
        return set()

    @classmethod
    def check(cls, options: dict[str, Any]) -> None:
        """Raise ValueError naming the first option that breaks its rule in `rules`.

        Constructors pass `locals()` first thing, so every rule checks its argument of the same name.
        """
        check_options(cls.label, cls.rules, options)

    def after_loss(self, learner, loss: torch.Tensor) -> torch.Tensor:
        return loss

    def after_step(self, learner) -> None:
        pass

    def after_epoch(self, learner) -> None:
        pass

    def on_task_switch(self, learner) -> None:
        pass

    def forget_units(self, group, mask: torch.Tensor) -> None:
        """A method re-initialised the units of `group` in mask [R, U]: forget what this one knew of them."""

    def forget_params(self, params: list[nn.Parameter]) -> None:
        """A method re-initialised these parameters whole: forget what this one knew of them."""

    def tell_units_reset(self, learner, group, mask: torch.Tensor) -> None:
        """This method re-initialised the units of `group` in mask: every method of the learner forgets them
        (this one included; only this one when the hooks are called without a learner)."""
        for method in learner.methods if learner is not None else [self]:
            method.forget_units(group, mask)

    def tell_params_reset(self, learner, params: list[nn.Parameter]) -> None:
        """This method re-initialised `params` whole: every method of the learner forgets them."""
        for method in learner.methods if learner is not None else [self]:
            method.forget_params(params)

    def stats(self) -> dict[str, float]:
        """Counters worth logging, e.g. {'layer0/replacements': 3}."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, sd: dict) -> None:
        pass
