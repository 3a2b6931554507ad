"""Plasticity methods: each acts on a network's unit groups through the hooks of PlasticityMethod."""

from rl_plasticity.core.methods.base import PlasticityMethod
from rl_plasticity.core.methods.cbp import ContinualBackprop
from rl_plasticity.core.methods.redo import ReDo
from rl_plasticity.core.methods.snp import ShrinkPerturb

__all__ = ["PlasticityMethod", "ContinualBackprop", "ReDo", "ShrinkPerturb"]
