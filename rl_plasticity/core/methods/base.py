"""The interface every plasticity method implements: a few hook points in the training loop.

The learner calls them in this order: `after_loss` (may add a penalty to the loss), the optimizer
step, `after_step` (the latest activations are in each group's tap), and, when the problem says so,
`after_epoch` (end of a rollout's update or a supervised epoch) and `on_task_switch`.
"""

from __future__ import annotations

import torch


class PlasticityMethod:
    name = "method"

    def after_loss(self, learner, loss: torch.Tensor) -> torch.Tensor:
        return loss

    def after_step(self, learner) -> None:
        pass

    def after_epoch(self, learner) -> None:
        pass

    def on_task_switch(self, learner) -> None:
        pass

    def stats(self) -> dict[str, float]:
        """Counters worth logging, e.g. {'layer0/replacements': 3}."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, sd: dict) -> None:
        pass
