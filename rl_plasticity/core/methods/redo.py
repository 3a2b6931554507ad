"""ReDo (Sokar et al., 2023): every `every` optimizer steps, reinitialise dormant units.

A unit's score is its mean |activation| over the latest batch divided by the layer's average of
that quantity; units scoring at most `threshold` are dormant. They get fresh incoming weights from
the layer's init, outgoing weights 0 and a fresh optimizer state. `reset_optimizer_state=False`
keeps their optimizer state, as the paper's official PPO code did (lop/algos/gntRedo.py never
touches the optimizer).
"""

from __future__ import annotations

import torch

from rl_plasticity.config import Range
from rl_plasticity.core.methods.base import PlasticityMethod
from rl_plasticity.core.units import UnitGroup

# The `redo` config section: its defaults and rules, declared here only.
DEFAULTS = {"enabled": False, "threshold": 0.1, "every": 100, "reset_optimizer_state": True}
RULES = {"threshold": Range(low=0), "every": Range(low=1)}


def redo_scores(activation: torch.Tensor) -> torch.Tensor:
    """[R, B, U, ...] -> [R, U]: each unit's mean |activation| relative to its layer's mean."""
    per_unit = activation.abs().transpose(1, 2).flatten(2).mean(2)
    return per_unit / per_unit.mean(1, keepdim=True).clamp_min(1e-12)


class ReDo(PlasticityMethod):
    name, label, defaults, rules = "redo", "ReDo", DEFAULTS, RULES

    def __init__(self, groups: list[UnitGroup], optimizer, generators, threshold: float = DEFAULTS["threshold"],
                 every: int = DEFAULTS["every"], reset_optimizer_state: bool = DEFAULTS["reset_optimizer_state"]):
        self.check(locals())
        self.groups, self.optimizer, self.generators = groups, optimizer, generators
        self.threshold, self.every, self.reset_optimizer_state = threshold, every, reset_optimizer_state
        self.steps = 0
        self.resets = [torch.zeros(g.replicas, dtype=torch.long, device=g.incoming.weight.device) for g in groups]

    @torch.no_grad()
    def after_step(self, learner=None) -> None:
        self.steps += 1
        if self.steps % self.every:
            return
        for i, group in enumerate(self.groups):
            mask = redo_scores(group.activation) <= self.threshold
            if not bool(mask.any()):
                continue
            group.reinit(mask, self.generators)
            if self.reset_optimizer_state:
                for pu in group.all_params():
                    self.optimizer.reset_units(pu, mask)
            self.tell_units_reset(learner, group, mask)
            self.resets[i] += mask.sum(1)

    def stats(self) -> dict[str, float]:
        return {f"{g.name}/resets": float(self.resets[i].float().mean()) for i, g in enumerate(self.groups)}

    def state_dict(self) -> dict:
        return {"steps": self.steps, "resets": [t.clone() for t in self.resets]}

    def load_state_dict(self, sd: dict) -> None:
        self.steps = int(sd["steps"])
        for dst, src in zip(self.resets, sd["resets"]):
            dst.copy_(src)
