"""ReDo (Sokar et al., 2023): every `every` optimizer steps, reinitialise dormant units.

A unit's score is its mean |activation| over the latest batch divided by the layer's average of
that quantity; units scoring at most `threshold` are dormant. They get fresh incoming weights from
the layer's init, outgoing weights 0 and a fresh optimizer state. `reset_optimizer_state=False`
keeps their optimizer state, as the paper's official PPO code did (lop/algos/gntRedo.py never
touches the optimizer).

`score_over: batch` (the paper's) scores the latest batch. With one example per step (the online regression
and permuted MNIST streams) that batch is a single example, on which about half of a ReLU layer's units are
inactive, so ReDo would reset units that are merely off for this one input. `score_over: interval` scores
the mean |activation| over every step since the last check (each step's batch mean, averaged): the same
score over the data seen in the interval, which is what the paper's batch stands for.
"""

from __future__ import annotations

import torch

from rl_plasticity.config import OneOf, Range
from rl_plasticity.core.methods.base import PlasticityMethod
from rl_plasticity.core.units import UnitGroup

# The `redo` config section: its defaults and rules, declared here only.
DEFAULTS = {"enabled": False, "threshold": 0.1, "every": 100, "reset_optimizer_state": True, "score_over": "batch"}
RULES = {"threshold": Range(low=0), "every": Range(low=1), "score_over": OneOf("batch", "interval")}


def mean_abs_activation(activation: torch.Tensor) -> torch.Tensor:
    """[R, B, U, ...] -> [R, U]: each unit's mean |activation| over the batch (and positions)."""
    return activation.abs().transpose(1, 2).flatten(2).mean(2)


def relative(per_unit: torch.Tensor) -> torch.Tensor:
    """[R, U] -> [R, U]: each unit's value relative to its layer's mean."""
    return per_unit / per_unit.mean(1, keepdim=True).clamp_min(1e-12)


def redo_scores(activation: torch.Tensor) -> torch.Tensor:
    """[R, B, U, ...] -> [R, U]: each unit's mean |activation| relative to its layer's mean."""
    return relative(mean_abs_activation(activation))


class ReDo(PlasticityMethod):
    name, label, defaults, rules = "redo", "ReDo", DEFAULTS, RULES

    def __init__(self, groups: list[UnitGroup], optimizer, generators, threshold: float = DEFAULTS["threshold"],
                 every: int = DEFAULTS["every"], reset_optimizer_state: bool = DEFAULTS["reset_optimizer_state"],
                 score_over: str = DEFAULTS["score_over"]):
        self.check(locals())
        self.groups, self.optimizer, self.generators = groups, optimizer, generators
        self.threshold, self.every, self.reset_optimizer_state = threshold, every, reset_optimizer_state
        # With score_over="interval": each unit's summed batch-mean |activation| since the last check.
        self.sums = ([torch.zeros(g.replicas, g.num_units, device=g.incoming.weight.device) for g in groups]
                     if score_over == "interval" else None)
        self.steps = 0
        self.resets = [torch.zeros(g.replicas, dtype=torch.long, device=g.incoming.weight.device) for g in groups]

    @torch.no_grad()
    def after_step(self, learner=None) -> None:
        self.steps += 1
        if self.sums is not None:
            for total, group in zip(self.sums, self.groups):
                total += mean_abs_activation(group.activation)
        if self.steps % self.every:
            return
        for i, group in enumerate(self.groups):
            scores = redo_scores(group.activation) if self.sums is None else relative(self.sums[i])
            if self.sums is not None:
                self.sums[i].zero_()
            mask = scores <= self.threshold
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
        return {"steps": self.steps, "resets": [t.clone() for t in self.resets],
                "sums": None if self.sums is None else [t.clone() for t in self.sums]}

    def load_state_dict(self, sd: dict) -> None:
        self.steps = int(sd["steps"])
        for dst, src in zip(self.resets, sd["resets"]):
            dst.copy_(src)
        for dst, src in zip(self.sums or [], sd.get("sums") or []):  # checkpoints before score_over have none
            dst.copy_(src)
