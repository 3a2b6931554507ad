"""Build a learner's optimizer and plasticity methods from the shared config sections.

Every problem's config has the same `optimizer` section and one section per registered plasticity
method (`cbp`, `redo`, `snp`: rl_plasticity.core.methods.METHODS), so a method is configured the same
way everywhere, and several methods compose by enabling several sections. The optimizer's section is
declared here; each method's section (defaults and rules) is declared in its own module.
"""

from __future__ import annotations

import copy

import torch

from rl_plasticity.config import Numbers, OneOf, Range
from rl_plasticity.core.learner import Learner
from rl_plasticity.core.methods import METHODS
from rl_plasticity.core.optim import build_optimizer
from rl_plasticity.core.units import UnitGroup

OPTIMIZER_DEFAULTS = {"name": "sgd", "lr": 0.01, "momentum": 0.0, "betas": [0.9, 0.999], "eps": 1e-8,
                      "weight_decay": 0.0}
OPTIMIZER_RULES = {
    "name": OneOf("sgd", "adam"),
    "lr": Range(low=0, low_open=True),
    "momentum": Range(low=0, high=1, high_open=True),
    "betas": Numbers(2, Range(low=0, high=1, high_open=True)),
    "eps": Range(low=0, low_open=True),
    "weight_decay": Range(low=0),
}


def method_defaults() -> dict:
    """The `optimizer` section and every registered method's section, as problems' DEFAULTS hold them."""
    sections = {"optimizer": OPTIMIZER_DEFAULTS, **{name: m.defaults for name, m in METHODS.items()}}
    return copy.deepcopy(sections)  # callers may change their copy; the declarations stay as they are


def method_rules() -> dict:
    """The rules of those sections, keyed by dotted path ('cbp.decay_rate')."""
    sections = {"optimizer": OPTIMIZER_RULES, **{name: m.rules for name, m in METHODS.items()}}
    return {f"{name}.{key}": rule for name, rules in sections.items() for key, rule in rules.items()}


METHOD_DEFAULTS = method_defaults()
METHOD_RULES = method_rules()


def build_learner(params, groups: list[UnitGroup], cfg: dict, generators: list[torch.Generator]) -> Learner:
    params = list(params)
    o = cfg["optimizer"]
    optimizer = build_optimizer(params, o["name"], o["lr"], momentum=o["momentum"], betas=o["betas"],
                                eps=o["eps"], weight_decay=o["weight_decay"])
    methods = []
    for name, method in METHODS.items():
        if cfg[name]["enabled"]:
            built = method.from_config(cfg[name], groups, params, optimizer, generators)
            if built is not None:  # e.g. a method acting on units, and no unit groups
                methods.append(built)
    return Learner(params, optimizer, methods)
