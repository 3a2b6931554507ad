"""Adam with a meta-learned step size per weight: IDBD's meta-gradient (Sutton 1992) on top of Adam's normalised
direction, the combination of normalisation and meta-gradient descent that Degris, Javed, Sharifnassab, Liu &
Sutton (2024, "Step-size optimization for continual learning") end on as a promising direction, with the discounted,
Hessian-free trace of MetaOptimize (Sharifnassab, Salehkaleybar & Sutton, ICML 2025).

Per weight i, with g the loss gradient (plus coupled L2, as Adam here) and t the weight's own step count:
    m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2                       Adam's moments
    d = sqrt(v / (1 - b2^t)) + eps,   u = m / (1 - b1^t) / d                 Adam's normalised direction
    log alpha <- log alpha - theta (1 - gamma) (g / d) e                     normalised meta-gradient step
    w <- w - alpha u
    e <- gamma e - u                                                         alpha e ~ dw / dlog alpha
alpha starts at lr, so with meta_step_size 0 this is Adam; the reported step size (`step_sizes`) is alpha, the
learned scale of Adam's step.

The meta-gradient. IDBD treats log step sizes as parameters of the loss to come: with h = dw/dlog alpha, the next
loss changes with log alpha_i by g_i h_i, and log alpha descends that. Differentiating the update,
    dw_{t+1}/dlog alpha = h_t - alpha u_t - alpha (du_t/dw) h_t,
where du/dw carries the Hessian H. Degris et al. present IDBD as this stochastic meta-gradient descent; for a
nonlinear network the last term is where the variants part. The variants, and which are sound there:
- Exact Hessian-vector products (Schraudolph's SMD): a second backward pass at every step. A network's Hessian is
  indefinite, so (I - alpha H) can amplify h (SMD uses the Gauss-Newton matrix instead for this reason). The
  optimizers here see gradients only. Not offered.
- The Hessian's diagonal: extra passes too (e.g. HesScale), and unsound as it stands: a negative entry makes h's
  decay factor exceed 1 and h grows geometrically (IDBD's [1 - alpha c]^+ only guards the other side).
- A non-negative estimate of the diagonal, the squared gradient (empirical Fisher): what `idbd` and `autostep`
  use (core/step_size.py). It is stable (the decay stays in [0, 1]) and cheap but biased, and on top of Adam it
  fails: through the normalisation the term is alpha (1 - b1) g^2 / d ~ alpha (1 - b1) |g|, which is ~1e-7
  per step at PPO's lr 1e-4 and gradients ~1e-2. h would then sum every past step and never forget, and the
  meta-gradient would compare today's gradient with the whole run's displacement.
- Hessian-free with a discount: drop the term and decay h by gamma (MetaOptimize's lower-complexity variant;
  gamma is the discount of its objective, a discounted sum of future losses, so a step size is judged over
  about 1 / (1 - gamma) steps). Chosen: it is the exact derivative for a loss that is locally linear over that
  horizon, bounded, free of the loss's scale, and costs nothing extra. As IDBD does when it derives h, we hold
  the step size fixed over the horizon, so h = alpha e with e the discounted sum of past directions -u. Then
  -(g / d) e is the agreement of today's gradient with the recent steps: steps that keep going the same way
  grow, steps that overshoot (the gradient turns against them) shrink, delta-bar-delta's rule.

The normalisation. IDBD's meta step size depends on the scale of the loss and of the step sizes; Degris et al.
name this sensitivity to theta as its main limitation. g h carries both. Multiplying the meta-gradient g alpha e
by (1 - gamma) / (alpha d), a positive diagonal preconditioner, changes no sign, so log alpha still descends the
meta-objective, and makes theta dimensionless, as Adam's normalisation makes lr independent of the loss's scale:
g / d is about 1 in size and (1 - gamma) e is a weighted average of recent directions u, so theta is the size of
one step's change of log alpha whatever the loss, the step size or the horizon (|g / d| <= 1 / sqrt(1 - b2)).
It also lets a collapsed step size recover as fast as it fell: raw IDBD's change of log alpha is proportional to
alpha, so a step size that has shrunk a hundredfold moves a hundred times slower. The trace is kept in units of
the step size (e, not h): dividing a trace h of past steps alpha u by today's alpha instead amplifies itself,
since when alpha falls, h / alpha grows and the next fall is larger (on the regression stream a step size fell
from 1e-4 to 0 within five steps that way). MetaOptimize's reference code (github sabersalehk/MetaOptimize,
MetaOptimize_AdamW_Lion_hg.py) normalises with the sign of a momentum (Lion) instead; it learns one step size per
network or per layer, and per weight a sign would move every log step size by theta at every step, whatever
the evidence.

Where the toolkit departs from that reference code, and why:
- a step size per weight, as IDBD has it, not one per network or layer;
- the trace accumulates Adam's own direction u (momentum included), the exact derivative under the Hessian-free
  approximation; the reference accumulates alpha g / d;
- weight decay is coupled (g includes wd * w, as the toolkit's Adam); its Hessian wd is dropped with the rest;
- bias corrections are per element, as in core/optim.py's Adam, so a replaced unit (`reset_units`) starts
  exactly as a fresh parameter: moments 0, powers 1 (t = 0), log alpha = log lr, e = 0. The powers stop
  being multiplied once 1 - beta^t rounds to 1 for every weight (then the plain Adam step is bit-identical),
  until a reset makes some weight young again.

PPO (rl_plasticity/problems/mujoco_ppo.py) accepts this optimizer as well as Adam: the meta-gradient is defined
for any differentiable loss, and each minibatch's clipped surrogate is one. Its betas and eps are the section's
own `optimizer.betas` and `optimizer.eps`, as for Adam.
"""

from __future__ import annotations

import math

import torch

from rl_plasticity.config import Range, check_options
from rl_plasticity.core.optim import Adam
from rl_plasticity.core.step_size import FlatStateOptimizer

DEFAULTS = {"meta_step_size": 0.01, "trace_decay": 0.99}
RULES = {"meta_step_size": Range(low=0), "trace_decay": Range(low=0, high=1, high_open=True)}


class MetaAdam(FlatStateOptimizer):
    name, label, defaults, rules = "meta_adam", "MetaAdam", DEFAULTS, RULES

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 meta_step_size: float = DEFAULTS["meta_step_size"], trace_decay: float = DEFAULTS["trace_decay"]):
        self.check(locals())
        check_options(self.label, Adam.rules, {"betas": list(betas), "eps": eps})
        self.fresh_state = {"exp_avg": 0.0, "exp_avg_sq": 0.0, "beta1_power": 1.0, "beta2_power": 1.0,
                            "log_alpha": math.log(lr), "trace": 0.0}
        super().__init__(params, lr, weight_decay)
        (self.beta1, self.beta2), self.eps = betas, eps
        self.meta_step_size, self.trace_decay = meta_step_size, trace_decay
        # An upper bound of every weight's beta^t, and the size below which 1 - beta^t rounds to 1.
        self.max_power = 1.0
        self.negligible = torch.finfo(self.params[0].dtype).eps / 4 if self.params else 0.0

    @classmethod
    def from_config(cls, params, section: dict, generators):
        return cls(params, section["lr"], betas=tuple(section["betas"]), eps=section["eps"],
                   weight_decay=section["weight_decay"], **cls.options(section))

    @torch.no_grad()
    def step(self, grads):
        if not self.params:
            return
        s = self.flat
        g = self._flatten(grads)
        if self.weight_decay:
            g.add_(self._flatten(self.params), alpha=self.weight_decay)
        m, v = s["exp_avg"], s["exp_avg_sq"]
        m.lerp_(g, 1 - self.beta1)
        v.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
        d, m_hat = v.sqrt(), m
        if self.max_power >= self.negligible:  # some weight is young: bias-correct, per weight
            p1, p2 = s["beta1_power"].mul_(self.beta1), s["beta2_power"].mul_(self.beta2)
            d.div_(p2.neg().add_(1.0).sqrt_())
            m_hat = m / p1.neg().add_(1.0)
            self.max_power *= max(self.beta1, self.beta2)
        u = m_hat / d.add_(self.eps)
        log_alpha, e = s["log_alpha"], s["trace"]
        if self.meta_step_size:
            log_alpha.addcmul_(g.div_(d), e, value=-self.meta_step_size * (1 - self.trace_decay))
        torch.mul(log_alpha.exp(), u, out=self._step)
        self._apply_step()
        e.mul_(self.trace_decay).sub_(u)

    def step_sizes(self) -> list[torch.Tensor]:
        return self._views(self.flat["log_alpha"].exp()) if self.params else []

    @torch.no_grad()
    def reset_units(self, pu, mask: torch.Tensor) -> None:
        super().reset_units(pu, mask)
        if bool(mask.any()):
            self.max_power = 1.0

    def state_dict(self) -> dict:
        return {**super().state_dict(), "max_power": self.max_power}

    def load_state_dict(self, sd: dict) -> None:
        super().load_state_dict(sd)
        self.max_power = float(sd["max_power"])
