"""Build a learner's optimizer and plasticity methods from the shared config sections.

Every problem's config has the same `optimizer` section and one section per registered plasticity
method (`cbp`, `redo`, `snp`: rl_plasticity.core.methods.METHODS), so a method is configured the same
way everywhere, and several methods compose by enabling several sections. Each optimizer (OPTIMIZERS
below) and each method declares its own keys (defaults and rules) in its own module; the sections are
derived from those declarations here.

Adding an optimizer takes one new file and one line in OPTIMIZERS: an rl_plasticity.core.optim.Optimizer
subclass with `name`, `label`, `defaults`, `rules` and `fresh_state` (see core/upgd.py). Its keys appear
as the subsection `optimizer.<name>` of every problem's config, and `optimizer.name=<name>` picks it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from rl_plasticity.config import OneOf
from rl_plasticity.core.learner import Learner
from rl_plasticity.core.meta_adam import MetaAdam
from rl_plasticity.core.methods import METHODS, Target
from rl_plasticity.core.optim import COMMON_RULES, SGD, Adam, Optimizer
from rl_plasticity.core.step_size import IDBD, Autostep
from rl_plasticity.core.units import UnitGroup
from rl_plasticity.core.upgd import UPGD
from rl_plasticity.errors import UserError

# `optimizer.name` -> optimizer class.
OPTIMIZERS: dict[str, type[Optimizer]] = {optimizer.name: optimizer for optimizer in (
    SGD,
    Adam,
    UPGD,
    IDBD,
    Autostep,
    MetaAdam,
)}


def optimizer_defaults() -> dict:
    """The `optimizer` section: the shared keys, SGD's and Adam's keys beside them (where configs have always
    had them) and one subsection per other optimizer, in the order of today's section."""
    flat = {k: v for o in OPTIMIZERS.values() if o.flat for k, v in o.defaults.items()}
    nested = {o.name: o.defaults for o in OPTIMIZERS.values() if not o.flat and o.defaults}
    return copy.deepcopy({"name": "sgd", "lr": 0.01, **flat, "weight_decay": 0.0, **nested})


def optimizer_rules() -> dict:
    """The rules of that section, keyed by the section's dotted keys ('upgd.sigma')."""
    flat = {k: r for o in OPTIMIZERS.values() if o.flat for k, r in o.rules.items()}
    nested = {f"{o.name}.{k}": r for o in OPTIMIZERS.values() if not o.flat for k, r in o.rules.items()}
    return {"name": OneOf(*OPTIMIZERS), "lr": COMMON_RULES["lr"], **flat,
            "weight_decay": COMMON_RULES["weight_decay"], **nested}


OPTIMIZER_DEFAULTS = optimizer_defaults()
OPTIMIZER_RULES = optimizer_rules()


def build_optimizer(params, section: dict, generators: list[torch.Generator | None]) -> Optimizer:
    """The optimizer a resolved `optimizer` section names; generators: one per replica (for its noise)."""
    return OPTIMIZERS[section["name"]].from_config(list(params), section, generators)


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


def build_learner(params, groups: list[UnitGroup], cfg: dict, generators: list[torch.Generator],
                  nets: list[nn.Module] = ()) -> Learner:
    """The learner of `params` with the optimizer and every enabled method of `cfg`. `nets` are the whole
    networks the params belong to, for methods that act on layers or whole networks (e.g. `reset`)."""
    params = list(params)
    optimizer = build_optimizer(params, cfg["optimizer"], generators)
    target = Target(params, list(groups), optimizer, generators, list(nets))
    methods = []
    for name, method in METHODS.items():
        if cfg[name]["enabled"]:
            try:
                built = method.from_config(cfg[name], target)
            except ValueError as e:  # a combination the method refuses (e.g. a network it cannot act on)
                raise UserError(f"config section '{name}': {e}") from None
            if built is not None:  # e.g. a method acting on units, and no unit groups
                methods.append(built)
    return Learner(params, optimizer, methods)


HOOK_WORDS = {"epoch": "the end of each epoch", "task_switch": "each task switch"}


def check_method_hooks(cfg: dict, signalled: set[str], how: dict[str, str] | None = None) -> None:
    """Refuse an enabled method configured to act at a point the problem never signals (`signalled`: a
    subset of "epoch", "task_switch"), so that no method silently does nothing; `how` says, per point,
    which key makes the problem signal it."""
    for name, method in METHODS.items():
        if cfg[name]["enabled"]:
            for point in sorted(method.needs(cfg[name]) - signalled):
                hint = f"; set {how[point]}" if how and point in how else ""
                raise UserError(f"config section '{name}' acts at {HOOK_WORDS[point]}, which "
                                f"{cfg['problem']} never signals{hint}")
