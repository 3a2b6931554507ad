"""The problems a config can name with `problem:`: the registry, and how a config is resolved.

Each problem module owns its facts: `DEFAULTS` (every key, the paper's settings), `RULES` (per-key
validation), `check(cfg)` (constraints across keys, data paths), `HEADLINE` (what `compare` and the
sweep's TensorBoard layout show first) and `run(cfg, seeds, run_dir, resume)`, which builds its run
object and hands it to the one run loop (rl_plasticity/run/loop.py). Adding a problem is one module
and one line below.
"""

from __future__ import annotations

import importlib

from rl_plasticity.config import apply_overrides, validate
from rl_plasticity.errors import UserError
from rl_plasticity.problems.headline import Headline

PROBLEMS = {
    "regression": "rl_plasticity.problems.regression",
    "ppo": "rl_plasticity.problems.mujoco_ppo",
    "permuted_mnist": "rl_plasticity.problems.permuted_mnist",
    "continual_imagenet": "rl_plasticity.problems.continual_imagenet",
    "incremental_cifar": "rl_plasticity.problems.incremental_cifar",
}


def problem_module(name):
    if name not in PROBLEMS:
        raise UserError(f"config key 'problem' must be one of {sorted(PROBLEMS)}, got {name!r}")
    return importlib.import_module(PROBLEMS[name])


def headline(name: str | None) -> Headline:
    """The headline of a registered problem; for anything else, none: no default metrics, x axis "step"."""
    return problem_module(name).HEADLINE if name in PROBLEMS else Headline(metrics=[], x_label="step")


def resolve_config(raw: dict, overrides: list[str]) -> tuple[dict, object]:
    """(validated config with every default filled in, its problem module)."""
    cfg = apply_overrides(raw, overrides)
    module = problem_module(cfg.get("problem"))
    cfg = validate(cfg, module.DEFAULTS, module.RULES)
    if hasattr(module, "check"):
        module.check(cfg)
    return cfg, module
