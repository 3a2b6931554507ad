"""Per-weight step sizes learned online: IDBD (Sutton 1992, "Adapting bias by gradient descent: an incremental
version of delta-bar-delta") and Autostep (Mahmood, Sutton, Degris & Pilarski 2012, "Tuning-free step-size
adaptation").

Both were written for a linear LMS learner, with error delta and inputs x_i. For a network we use their
gradient form, as Degris, Javed, Sharifnassab, Liu & Sutton (2024, "Step-size optimization for continual
learning") read IDBD: stochastic meta-gradient descent of the loss with respect to log step sizes. With
g_i = dL/dw_i (for L = delta^2 / 2, delta * x_i = -g_i) and c_i the Hessian diagonal d2L/dw_i^2 (x_i^2 for LMS):

IDBD (Sutton 1992, Figure 2), meta step size theta, alpha_i = exp(beta_i):
    beta_i <- beta_i - theta * g_i * h_i
    w_i    <- w_i - alpha_i * g_i
    h_i    <- h_i * [1 - alpha_i * c_i]^+ - alpha_i * g_i
h_i tracks dw_i/dbeta_i, so -g_i * h_i is the (one-weight) derivative of the next loss with respect to beta_i:
beta follows the meta-gradient. That derivation holds for any differentiable loss; only the decay of h uses
the Hessian, because dw_{t+1}/dbeta = h - alpha * c * h - alpha * g once cross terms H_ij (i != j) are dropped,
the diagonal approximation IDBD already makes for LMS.

Autostep (Mahmood et al. 2012, Algorithm 1), meta step size mu, time scale tau:
    v_i     <- max(|g_i h_i|, v_i + alpha_i c_i (|g_i h_i| - v_i) / tau)     normaliser of the meta-gradient
    alpha_i <- alpha_i * exp(-mu * g_i h_i / v_i)                           (unchanged while v_i = 0)
    M = max(sum_i alpha_i c_i, 1);  alpha_i <- alpha_i / M                  effective step bounded by 1
    w_i     <- w_i - alpha_i g_i
    h_i     <- h_i (1 - alpha_i c_i) - alpha_i g_i
For LMS, sum_i alpha_i x_i^2 <= 1 means one step never overshoots the example's target; the sum runs over all
weights of one replica's network (replicas never mix).

What is approximated for a network: c_i. The exact Hessian diagonal costs far more than a gradient, and
dropping it leaves h_i a sum of every past step that never decays. We use the squared gradient, c_i = g_i^2:
the diagonal of the empirical Fisher (outer product of gradients), the usual cheap curvature estimate (the
second moment that RMSProp and Adam normalise by). For a log-likelihood loss it matches the Hessian's
Gauss-Newton part in expectation; for squared error it equals delta^2 x_i^2, the LMS term scaled by the squared
error, so it is small once the error is. The price is Autostep's bound, which then reads sum alpha_i g_i^2 <= 1:
delta^2 times stricter than LMS's where errors exceed 1 (on Sutton's tracking task, errors of a few units shrink
its step sizes about a hundredfold); losses whose residuals stay near or below 1 (cross-entropy) feel it
far less. Coupled weight decay wd adds wd * w_i to g_i and its exact Hessian wd
to c_i. Callers that know the curvature pass it: `step(grads, curvature=[...])` (a linear learner passes
x_i^2 and gets the textbook algorithms, which the tests check against a scalar IDBD).

`lr` is the initial step size: a fresh weight (and a replaced unit, `reset_units`) has beta_i = log(lr) or
alpha_i = lr, h_i = 0, v_i = 0. Changing `lr` later (an lr schedule) has no effect: the step sizes are learned.
"""

from __future__ import annotations

import math

import torch

from rl_plasticity.config import Range
from rl_plasticity.core.optim import Optimizer


class StepSizeOptimizer(Optimizer):
    """What IDBD and Autostep share: the curvature estimate c_i and the coupled weight decay."""

    def _gradient_and_curvature(self, grads, curvature):
        """g (with the L2 penalty's gradient) and c (g_loss^2 unless given, plus the penalty's wd)."""
        c = torch._foreach_mul(grads, grads) if curvature is None else [t.clone() for t in curvature]
        if self.weight_decay:
            torch._foreach_add_(c, self.weight_decay)
        return self._decayed(grads), c


IDBD_DEFAULTS = {"meta_step_size": 0.01}
IDBD_RULES = {"meta_step_size": Range(low=0)}


class IDBD(StepSizeOptimizer):
    name, label, defaults, rules = "idbd", "IDBD", IDBD_DEFAULTS, IDBD_RULES

    def __init__(self, params, lr: float, weight_decay: float = 0.0,
                 meta_step_size: float = IDBD_DEFAULTS["meta_step_size"]):
        self.check(locals())
        self.fresh_state = {"beta": math.log(lr), "h": 0.0}
        super().__init__(params, lr, weight_decay)
        self.meta_step_size = meta_step_size

    @torch.no_grad()
    def step(self, grads, curvature=None):
        g, c = self._gradient_and_curvature(grads, curvature)
        beta, h = self.state["beta"], self.state["h"]
        torch._foreach_add_(beta, torch._foreach_mul(g, h), alpha=-self.meta_step_size)
        alpha = torch._foreach_exp(beta)
        step = torch._foreach_mul(alpha, g)  # alpha_i * g_i
        torch._foreach_sub_(self.params, step)
        decay = torch._foreach_mul(alpha, c)
        torch._foreach_neg_(decay)
        torch._foreach_add_(decay, 1.0)
        torch._foreach_clamp_min_(decay, 0.0)  # [1 - alpha_i c_i]^+
        torch._foreach_mul_(h, decay)
        torch._foreach_sub_(h, step)

    def step_sizes(self) -> list[torch.Tensor]:
        return torch._foreach_exp(self.state["beta"])


AUTOSTEP_DEFAULTS = {"meta_step_size": 0.01, "tau": 10000.0}
AUTOSTEP_RULES = {"meta_step_size": Range(low=0), "tau": Range(low=1)}


class Autostep(StepSizeOptimizer):
    name, label, defaults, rules = "autostep", "Autostep", AUTOSTEP_DEFAULTS, AUTOSTEP_RULES

    def __init__(self, params, lr: float, weight_decay: float = 0.0,
                 meta_step_size: float = AUTOSTEP_DEFAULTS["meta_step_size"], tau: float = AUTOSTEP_DEFAULTS["tau"]):
        self.check(locals())
        self.fresh_state = {"alpha": lr, "h": 0.0, "v": 0.0}
        super().__init__(params, lr, weight_decay)
        self.meta_step_size, self.tau = meta_step_size, tau

    @torch.no_grad()
    def step(self, grads, curvature=None):
        if not self.params:
            return
        g, c = self._gradient_and_curvature(grads, curvature)
        alpha, h, v = self.state["alpha"], self.state["h"], self.state["v"]
        for a_i, h_i, v_i, g_i, c_i in zip(alpha, h, v, g, c):
            z = g_i * h_i  # -delta x_i h_i: the meta-gradient of log alpha_i
            abs_z = z.abs()
            v_i.copy_(torch.maximum(abs_z, v_i + a_i * c_i * (abs_z - v_i) / self.tau))
            moving = v_i > 0
            a_i.mul_(torch.where(moving, torch.exp(-self.meta_step_size * z / torch.where(moving, v_i, 1.0)), 1.0))
        # M per replica: the effective step of all that replica's weights, at least 1.
        effective = torch.stack([(a_i * c_i).flatten(1).sum(1) for a_i, c_i in zip(alpha, c)]).sum(0)
        normaliser = effective.clamp_min(1.0)
        for p, a_i, h_i, g_i, c_i in zip(self.params, alpha, h, g, c):
            a_i.div_(normaliser.view(-1, *[1] * (p.dim() - 1)))
            step = a_i * g_i
            p.sub_(step)
            h_i.mul_(1 - a_i * c_i).sub_(step)

    def step_sizes(self) -> list[torch.Tensor]:
        return [a.clone() for a in self.state["alpha"]]
