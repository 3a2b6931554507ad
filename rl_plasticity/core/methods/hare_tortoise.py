"""Hare & Tortoise (Lee, Cho, Kim, Kim, Min, Choo, Lyle, ICML 2024, "Slow and steady wins the race: maintaining
plasticity with hare and tortoise networks").

The trained network is the hare. A tortoise copy follows it by an exponential moving average after every
optimizer step, and now and then the hare is reset to the tortoise (the paper's two updates):
    theta_T <- ema * theta_T + (1 - ema) * theta_H      after every optimizer step
    theta_H <- theta_T                                  every `reset_every` epochs (`reset_on`)
The tortoise starts as a copy of the hare when the method is built (the official trainer deep-copies the model).

What follows the official code (github dojeon-ai/hare-tortoise, its base trainer and run scripts):
- `ema: 0.999` and a reset every 10 epochs, at the end of an epoch (`reset_every: 10`, `reset_on: epoch`);
  their loop tests `epoch % 10 == 0` on a 0-based count, so it also resets after the very first epoch; here
  the resets fall after epochs 10, 20, ...;
- the average covers the parameters and the buffers (batch-norm running statistics), and a reset copies both;
- a reset leaves the optimizer state as it is (their trainer builds a new optimizer only at a new task, for
  every learner alike). `reset_optimizer_state: true` instead gives every parameter a fresh optimizer state at
  each hare reset, exactly as a new parameter (Adam's moments and step count, SGD's momentum);
- their test() scores both networks (the hare, and the tortoise as the "target" model). Here the problems
  evaluate the trained hare unless a later change adds the tortoise: `tortoise_in_place()` puts the tortoise's
  weights into the networks for the length of a `with` block, for that.

`reset_on`: `epoch` counts the learner's end_epoch calls (a supervised epoch; a PPO rollout's update); the
online problems (regression, permuted MNIST) have no epochs, so use `steps` (optimizer steps) or
`task_switch` there. Every replica averages and resets on its own: the updates are element-wise.
Composition: the other methods act on the hare; weights they re-initialise (CBP, ReDo, SWR, reset) enter the
tortoise at rate 1 - ema per step, and a hare reset brings back the tortoise's average of them.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from rl_plasticity.config import OneOf, Range
from rl_plasticity.core.methods.base import PlasticityMethod
from rl_plasticity.core.units import ParamUnits, rows

RESET_ON = ("epoch", "steps", "task_switch")

# The `hare_tortoise` config section: its defaults and rules, declared here only.
DEFAULTS = {"enabled": False, "ema": 0.999, "reset_every": 10, "reset_on": "epoch", "reset_optimizer_state": False}
RULES = {"ema": Range(low=0, high=1, high_open=True), "reset_every": Range(low=1), "reset_on": OneOf(*RESET_ON)}


class HareTortoise(PlasticityMethod):
    name, label, defaults, rules = "hare_tortoise", "hare_tortoise", DEFAULTS, RULES

    def __init__(self, params: list[nn.Parameter], optimizer, nets: list[nn.Module] = (),
                 ema: float = DEFAULTS["ema"], reset_every: int = DEFAULTS["reset_every"],
                 reset_on: str = DEFAULTS["reset_on"],
                 reset_optimizer_state: bool = DEFAULTS["reset_optimizer_state"]):
        self.check(locals())
        self.params, self.optimizer = list(params), optimizer
        self.ema, self.reset_every, self.reset_on = ema, reset_every, reset_on
        self.reset_optimizer_state = reset_optimizer_state
        buffers = {id(b): b for net in nets for b in net.buffers() if b.is_floating_point()}
        self.hare = [p.detach() for p in self.params] + list(buffers.values())  # what the tortoise tracks
        self.tortoise = [t.clone() for t in self.hare]
        self._index = {id(p): i for i, p in enumerate(self.params)}
        self.steps, self.epochs, self.resets = 0, 0, 0

    @classmethod
    def from_config(cls, section, target):
        return cls(target.params, target.optimizer, target.nets, **cls.options(section))

    @classmethod
    def needs(cls, section: dict) -> set[str]:
        return {section["reset_on"]} - {"steps"}

    @torch.no_grad()
    def after_step(self, learner=None) -> None:
        torch._foreach_lerp_(self.tortoise, self.hare, 1 - self.ema)
        self.steps += 1
        if self.reset_on == "steps" and self.steps % self.reset_every == 0:
            self.reset_hare()

    def after_epoch(self, learner=None) -> None:
        self.epochs += 1
        if self.reset_on == "epoch" and self.epochs % self.reset_every == 0:
            self.reset_hare()

    def on_task_switch(self, learner=None) -> None:
        if self.reset_on == "task_switch":
            self.reset_hare()

    @torch.no_grad()
    def reset_hare(self) -> None:
        """theta_H <- theta_T (and, with reset_optimizer_state, a fresh optimizer state for every parameter)."""
        for hare, tortoise in zip(self.hare, self.tortoise):
            hare.copy_(tortoise)
        if self.reset_optimizer_state:
            for p in self.params:
                self.optimizer.reset_units(ParamUnits(p, rows), torch.ones(p.shape[:2], dtype=torch.bool,
                                                                            device=p.device))
        self.resets += 1

    @torch.no_grad()
    def forget_units(self, group, mask: torch.Tensor) -> None:
        """Re-initialised units start the tortoise afresh too: a later hare reset must not bring the old back."""
        for pu in group.all_params():
            i = self._index.get(id(pu.param))
            if i is not None:
                pu.units(self.tortoise[i])[mask] = pu.units()[mask]

    @torch.no_grad()
    def forget_params(self, params: list[nn.Parameter]) -> None:
        for p in params:
            i = self._index.get(id(p))
            if i is not None:
                self.tortoise[i].copy_(p)

    @contextmanager
    def tortoise_in_place(self):
        """Within the block the networks hold the tortoise's weights; the hare's come back after it."""
        with torch.no_grad():
            hare = [t.clone() for t in self.hare]
            for t, tortoise in zip(self.hare, self.tortoise):
                t.copy_(tortoise)
        try:
            yield
        finally:
            with torch.no_grad():
                for t, saved in zip(self.hare, hare):
                    t.copy_(saved)

    def stats(self) -> dict[str, float]:
        return {"resets": float(self.resets)}

    def state_dict(self) -> dict:
        return {"steps": self.steps, "epochs": self.epochs, "resets": self.resets,
                "tortoise": [t.clone() for t in self.tortoise]}

    def load_state_dict(self, sd: dict) -> None:
        self.steps, self.epochs, self.resets = int(sd["steps"]), int(sd["epochs"]), int(sd["resets"])
        if len(sd["tortoise"]) != len(self.tortoise) or any(
                a.shape != b.shape for a, b in zip(sd["tortoise"], self.tortoise)):
            raise ValueError("checkpoint tortoise does not match this network's shapes")
        with torch.no_grad():
            for dst, src in zip(self.tortoise, sd["tortoise"]):
                dst.copy_(src)
