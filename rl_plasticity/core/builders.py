"""Build a learner's optimizer and plasticity methods from the shared config sections.

Every problem's config has the same `optimizer`, `cbp`, `redo` and `snp` sections, so a method is
configured the same way everywhere, and several methods compose by enabling several sections.
"""

from __future__ import annotations

import torch

from rl_plasticity.config import OneOf, Range
from rl_plasticity.core.learner import Learner
from rl_plasticity.core.methods import ContinualBackprop, ReDo, ShrinkPerturb
from rl_plasticity.core.methods.cbp import REPLACEMENT_COUNTS, UTILITIES
from rl_plasticity.core.optim import build_optimizer
from rl_plasticity.core.units import UnitGroup

METHOD_DEFAULTS = {
    "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.0, "betas": [0.9, 0.999], "eps": 1e-8,
                  "weight_decay": 0.0},
    "cbp": {"enabled": False, "replacement_rate": 1e-4, "maturity_threshold": 100, "decay_rate": 0.99,
            "utility": "contribution", "transfer_mean_to_bias": True, "reset_optimizer_state": True,
            "replacement_count": "accumulate"},
    "redo": {"enabled": False, "threshold": 0.1, "every": 100, "reset_optimizer_state": True},
    "snp": {"enabled": False, "shrink": 0.0, "noise_std": 0.0},
}

METHOD_RULES = {
    "optimizer.name": OneOf("sgd", "adam"),
    "optimizer.lr": Range(low=0, low_open=True),
    "optimizer.momentum": Range(low=0, high=1, high_open=True),
    "optimizer.eps": Range(low=0, low_open=True),
    "optimizer.weight_decay": Range(low=0),
    "cbp.replacement_rate": Range(low=0, high=1),
    "cbp.maturity_threshold": Range(low=0),
    "cbp.decay_rate": Range(low=0, high=1, high_open=True),
    "cbp.utility": OneOf(*UTILITIES),
    "cbp.replacement_count": OneOf(*REPLACEMENT_COUNTS),
    "redo.threshold": Range(low=0),
    "redo.every": Range(low=1),
    "snp.shrink": Range(low=0, high=1, high_open=True),
    "snp.noise_std": Range(low=0),
}


def build_learner(params, groups: list[UnitGroup], cfg: dict, generators: list[torch.Generator]) -> Learner:
    params = list(params)
    o = cfg["optimizer"]
    optimizer = build_optimizer(params, o["name"], o["lr"], momentum=o["momentum"], betas=o["betas"],
                                eps=o["eps"], weight_decay=o["weight_decay"])
    methods = []
    if cfg["cbp"]["enabled"] and groups:
        c = cfg["cbp"]
        methods.append(ContinualBackprop(groups, optimizer, generators, replacement_rate=c["replacement_rate"],
                                         maturity_threshold=c["maturity_threshold"], decay_rate=c["decay_rate"],
                                         utility=c["utility"], transfer_mean_to_bias=c["transfer_mean_to_bias"],
                                         reset_optimizer_state=c["reset_optimizer_state"],
                                         replacement_count=c["replacement_count"]))
    if cfg["redo"]["enabled"] and groups:
        methods.append(ReDo(groups, optimizer, generators, threshold=cfg["redo"]["threshold"],
                            every=cfg["redo"]["every"], reset_optimizer_state=cfg["redo"]["reset_optimizer_state"]))
    if cfg["snp"]["enabled"]:
        methods.append(ShrinkPerturb(params, generators, shrink=cfg["snp"]["shrink"],
                                     noise_std=cfg["snp"]["noise_std"]))
    return Learner(params, optimizer, methods)
