"""Plasticity methods: each acts on a network's unit groups through the hooks of PlasticityMethod.

Each method owns its config section in its own module, once: the section's name (`name`), its
defaults (`defaults`, with `enabled: False`), its validation rules (`rules`) and `from_config`, which
builds the method from the resolved section. `METHODS` registers them; rl_plasticity.core.builders
derives every problem's method sections (METHOD_DEFAULTS, METHOD_RULES) from it, and `build_learner`
builds each enabled method, in the registry's order, which is the order the learner applies them in.

Adding a method takes one new file and one registry line:
1. rl_plasticity/core/methods/<name>.py: a PlasticityMethod subclass with `name`, `label`, `defaults`
   ({"enabled": False, ...}), `rules` ({key: Range/OneOf from rl_plasticity.config}) and the
   `from_config` classmethod; its constructor reads its keyword defaults from `defaults` and calls
   `self.check(locals())` first (see cbp.py, redo.py, snp.py);
2. one line in the tuple below (its place there is its place in the order methods are applied).
Then every problem's config has the new `<name>:` section, disabled, and `<name>.enabled=true` turns
it on (example configs are optional).
"""

from rl_plasticity.core.methods.base import PlasticityMethod, Target
from rl_plasticity.core.methods.cbp import ContinualBackprop
from rl_plasticity.core.methods.hare_tortoise import HareTortoise
from rl_plasticity.core.methods.l2_init import L2Init
from rl_plasticity.core.methods.parseval import Parseval
from rl_plasticity.core.methods.redo import ReDo
from rl_plasticity.core.methods.reset import Reset
from rl_plasticity.core.methods.snp import ShrinkPerturb
from rl_plasticity.core.methods.swr import SelectiveWeightReinit
from rl_plasticity.core.methods.weight_clipping import WeightClipping

# Section name -> method class, in the order the learner applies the methods.
METHODS: dict[str, type[PlasticityMethod]] = {method.name: method for method in (
    ContinualBackprop,
    ReDo,
    ShrinkPerturb,
    Reset,
    L2Init,
    Parseval,
    SelectiveWeightReinit,
    WeightClipping,  # clips whatever the step and the methods above left
    HareTortoise,  # last: the tortoise averages each step's final weights
)}

__all__ = ["METHODS", "PlasticityMethod", "Target", "ContinualBackprop", "ReDo", "ShrinkPerturb", "Reset", "L2Init",
           "Parseval", "SelectiveWeightReinit", "WeightClipping", "HareTortoise"]
