"""The learner core: a network, an optimizer and plasticity methods, stepped through one loop.

Every problem (supervised streams, PPO's actor and critic) forms its loss and calls `update`;
methods act at their hook points. Losses of replicas are summed: replicas share no parameters, so
each receives exactly the gradient of its own loss.
"""

from __future__ import annotations

import torch

from rl_plasticity.core.methods import PlasticityMethod
from rl_plasticity.core.optim import Optimizer


class Learner:
    def __init__(self, params, optimizer: Optimizer, methods: list[PlasticityMethod] = ()):
        self.params = list(params)
        self.optimizer = optimizer
        self.methods = list(methods)
        # The latest update's loss gradients, in params order: a reference kept for gradient metrics,
        # never copied (optimizers never change their grads in place).
        self.latest_grads: tuple[torch.Tensor, ...] = ()

    def update(self, loss: torch.Tensor) -> None:
        for method in self.methods:
            loss = method.after_loss(self, loss)
        grads = torch.autograd.grad(loss, self.params)
        self.latest_grads = grads
        self.optimizer.step(list(grads))
        for method in self.methods:
            method.after_step(self)

    def end_epoch(self) -> None:
        for method in self.methods:
            method.after_epoch(self)

    def task_switch(self) -> None:
        for method in self.methods:
            method.on_task_switch(self)

    def latest_gradients(self) -> dict[torch.Tensor, torch.Tensor]:
        """Parameter -> its loss gradient at the latest update (empty before the first update)."""
        return dict(zip(self.params, self.latest_grads))

    def stats(self) -> dict[str, float]:
        return {f"{m.name}/{k}": v for m in self.methods for k, v in m.stats().items()}

    def state_dict(self) -> dict:
        return {"params": [p.detach().clone() for p in self.params],
                "optimizer": self.optimizer.state_dict(),
                "methods": {m.name: m.state_dict() for m in self.methods}}

    @torch.no_grad()
    def load_state_dict(self, sd: dict) -> None:
        if len(sd["params"]) != len(self.params) or any(
                a.shape != b.shape for a, b in zip(sd["params"], self.params)):
            raise ValueError("checkpoint parameters do not match this network's shapes")
        for p, saved in zip(self.params, sd["params"]):
            p.copy_(saved)
        self.optimizer.load_state_dict(sd["optimizer"])
        for m in self.methods:
            m.load_state_dict(sd["methods"][m.name])
