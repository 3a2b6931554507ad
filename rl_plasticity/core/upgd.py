"""Utility-based perturbed gradient descent, UPGD (Elsayed & Mahmood, ICLR 2024, "Addressing loss of plasticity
and catastrophic forgetting in continual learning"): the first-order, global, protecting variant of Algorithm 1.

Each weight w keeps an exponential trace of its instantaneous utility, the first-order Taylor estimate of how
much the loss would grow were w set to zero, u = -g * w (g = dL/dw):
    U <- beta_u * U + (1 - beta_u) * u                      trace (zero at the start)
    eta = max U over every weight of the network            the trace itself, not bias-corrected
    s = sigmoid((U / (1 - beta_u^t)) / eta)                 scaled utility in (0, 1)
    w <- (1 - lr * weight_decay) * w - lr * (g + sigma * xi) * (1 - s),   xi ~ N(0, 1) per weight and step
Useful weights (s near 1) hardly move, which protects them from forgetting; useless ones take the gradient
step plus Gaussian noise, which keeps them plastic. This is `FirstOrderGlobalUPGD` of the reference code
(github mohmdelsayed/upgd, core/optim/weight_upgd/first_order.py), the optimizer its experiments ran, and its
defaults (beta_utility 0.999, sigma 0.001) are the reference's. Weight decay is the paper's: a decoupled
shrink of every weight, not scaled by the utility, and the utility uses the loss gradient alone.

Where the toolkit departs, and why:
- eta is the maximum over one replica's weights (its whole network: every parameter this optimizer trains),
  never across replicas, so seeds never mix: replica r computes what a network trained alone computes.
- The bias correction 1 - beta_u^t keeps its power per weight (the reference keeps one step count per tensor),
  so a replaced unit's traces restart exactly as a fresh parameter's (`reset_units`: trace 0, t = 0).
- When no weight has a positive trace (eta <= 0) the reference divides by zero (NaN weights) or by a negative
  eta (which protects the least useful weights most); here eta is at least the dtype's smallest positive
  number, so every weight with a negative utility is left unprotected and a zero utility gives s = 1/2, as
  it does whenever eta > 0.
- The noise of replica r comes from its own generator (all of the replica's weights in one draw per step,
  drawn on the CPU where generators live); sigma = 0 draws nothing.
- The README's stand-alone snippet steps by 2 * lr; the reference optimizer and Algorithm 1 step by lr, as here.
"""

from __future__ import annotations

import torch

from rl_plasticity.config import Range
from rl_plasticity.core.optim import Optimizer

DEFAULTS = {"beta_utility": 0.999, "sigma": 0.001}
RULES = {"beta_utility": Range(low=0, high=1, high_open=True), "sigma": Range(low=0)}


class UPGD(Optimizer):
    name, label, defaults, rules = "upgd", "UPGD", DEFAULTS, RULES
    # utility_power is beta_u^t, per weight: its bias correction is 1 - utility_power.
    fresh_state = {"utility": 0.0, "utility_power": 1.0}

    def __init__(self, params, lr: float, weight_decay: float = 0.0,
                 beta_utility: float = DEFAULTS["beta_utility"], sigma: float = DEFAULTS["sigma"],
                 generators: list[torch.Generator | None] | None = None):
        params = list(params)
        self.check(locals())
        super().__init__(params, lr, weight_decay)
        self.beta_utility, self.sigma = beta_utility, sigma
        self.replicas = self.params[0].shape[0] if self.params else 0
        self.generators = list(generators) if generators is not None else [None] * self.replicas
        if len(self.generators) != self.replicas:
            raise ValueError(f"UPGD needs one generator per replica ({self.replicas}), got {len(self.generators)}")
        self.sizes = [p[0].numel() for p in self.params]

    @classmethod
    def from_config(cls, params, section: dict, generators):
        return cls(params, section["lr"], weight_decay=section["weight_decay"], generators=generators,
                   **cls.options(section))

    def _noise(self) -> list[torch.Tensor]:
        """Standard normal noise shaped like each parameter; replica r's from generator r alone."""
        flat = torch.stack([torch.randn(sum(self.sizes), generator=g, dtype=self.params[0].dtype)
                            for g in self.generators]).to(self.params[0].device)
        return [chunk.reshape(p.shape) for chunk, p in zip(flat.split(self.sizes, dim=1), self.params)]

    @torch.no_grad()
    def step(self, grads):
        if not self.params:
            return
        self.perturbed_step(grads, self.update_utilities(grads))

    @torch.no_grad()
    def update_utilities(self, grads) -> torch.Tensor:
        """Advance every weight's utility trace; return eta per replica [R], the largest trace of its weights
        (split from `step` so that several of these can share one eta: rl_plasticity.UPGD's param groups)."""
        b = self.beta_utility
        traces, powers = self.state["utility"], self.state["utility_power"]
        torch._foreach_mul_(traces, b)
        torch._foreach_add_(traces, torch._foreach_mul(grads, self.params), alpha=-(1 - b))  # u = -g * w
        torch._foreach_mul_(powers, b)
        return torch.stack([u.flatten(1).amax(1) for u in traces]).amax(0)

    @torch.no_grad()
    def perturbed_step(self, grads, eta: torch.Tensor) -> None:
        """The weights' update, given eta per replica (`update_utilities`)."""
        traces, powers = self.state["utility"], self.state["utility_power"]
        eta = eta.clamp_min(torch.finfo(eta.dtype).tiny)
        noise = self._noise() if self.sigma else None
        if self.weight_decay:
            torch._foreach_mul_(self.params, 1 - self.lr * self.weight_decay)
        for i, (p, g, u, power) in enumerate(zip(self.params, grads, traces, powers)):
            scaled = torch.sigmoid(u / (1 - power) / eta.view(-1, *[1] * (p.dim() - 1)))
            direction = g if noise is None else g + self.sigma * noise[i]
            p.add_(direction * (1 - scaled), alpha=-self.lr)
