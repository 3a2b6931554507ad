"""rl-plasticity: study and cure loss of plasticity in deep RL and continual learning.

The public Python API (see README, "Use in your own PyTorch code", "Plasticity metrics of your own model" and
"With Stable-Baselines3"):

    from rl_plasticity import Plasticity, attach_cbp, attach_redo, attach_shrink_perturb, UnitSpec
    from rl_plasticity import Adam, SGD, UPGD, IDBD, Autostep, MetaAdam  # torch optimizers
    from rl_plasticity import Measure, measure  # plasticity metrics of a model
    from rl_plasticity import PlasticityPolicy, PlasticitySACPolicy, CBPPolicy, CBPSACPolicy  # Stable-Baselines3
    from rl_plasticity import PlasticityMetricsCallback, PlasticityHooksCallback  # Stable-Baselines3 callbacks

Names are imported on first use, so `import rl_plasticity` stays light (no torch import).
"""

__version__ = "0.1.0"

_EXPORTS = {
    "Adam": "rl_plasticity.integrations.optim",
    "SGD": "rl_plasticity.integrations.optim",
    "UPGD": "rl_plasticity.integrations.step_size",
    "IDBD": "rl_plasticity.integrations.step_size",
    "Autostep": "rl_plasticity.integrations.step_size",
    "MetaAdam": "rl_plasticity.integrations.step_size",
    "Plasticity": "rl_plasticity.integrations.torch_api",
    "attach_cbp": "rl_plasticity.integrations.torch_api",
    "attach_redo": "rl_plasticity.integrations.torch_api",
    "attach_shrink_perturb": "rl_plasticity.integrations.torch_api",
    "UnitSpec": "rl_plasticity.integrations.finder",
    "UnitsNotFound": "rl_plasticity.integrations.finder",
    "find_unit_specs": "rl_plasticity.integrations.finder",
    "CBPPolicy": "rl_plasticity.integrations.sb3",
    "CBPSACPolicy": "rl_plasticity.integrations.sb3",
    "Measure": "rl_plasticity.integrations.measure",
    "measure": "rl_plasticity.integrations.measure",
    "PlasticityPolicy": "rl_plasticity.integrations.sb3",
    "PlasticitySACPolicy": "rl_plasticity.integrations.sb3",
    "PlasticityMetricsCallback": "rl_plasticity.integrations.sb3_callbacks",
    "PlasticityHooksCallback": "rl_plasticity.integrations.sb3_callbacks",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rl_plasticity' has no attribute {name!r}")
