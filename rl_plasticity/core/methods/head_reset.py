"""Head reset: at every task switch the output layer starts afresh (new weights from its init, bias 0)
with a fresh optimizer state. Continual ImageNet does it for every learner (each task has new labels);
in class-incremental CIFAR it is the "head resetting" learner."""

from __future__ import annotations

import torch

from rl_plasticity.core.methods.base import PlasticityMethod
from rl_plasticity.core.units import ParamUnits, rows


class HeadReset(PlasticityMethod):
    name = "head_reset"

    def __init__(self, head, optimizer, generators: list[torch.Generator | None]):
        self.head, self.optimizer, self.generators = head, optimizer, generators
        self.resets = 0

    @torch.no_grad()
    def on_task_switch(self, learner=None) -> None:
        self.head.reset_parameters(self.generators)
        everything = torch.ones(self.head.weight.shape[:2], dtype=torch.bool, device=self.head.weight.device)
        for p in (self.head.weight, self.head.bias):
            self.optimizer.reset_units(ParamUnits(p, rows), everything)
        self.resets += 1

    def stats(self) -> dict[str, float]:
        return {"resets": float(self.resets)}

    def state_dict(self) -> dict:
        return {"resets": self.resets}

    def load_state_dict(self, sd: dict) -> None:
        self.resets = int(sd["resets"])
