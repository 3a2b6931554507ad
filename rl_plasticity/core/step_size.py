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

Which treatments of the curvature are sound for a nonlinear network, and the deep variant on top of Adam's
normalised step (`meta_adam`, the one PPO accepts), are in core/meta_adam.py. The state of all three lives in one
[R, N] buffer per name (`FlatStateOptimizer`): the arithmetic is the same, element by element, as per tensor.

The step-size metrics (`step_size_metrics`, logged by regression, permuted MNIST and PPO under
`plasticity/<net>/<layer>/step_size_*`): per layer, the 5%, 50% and 95% quantiles of its weights' step sizes,
a histogram of their log10, and the fraction that has collapsed, below `log.collapsed_step_size` (default: a
hundredth of `optimizer.lr`, see COLLAPSE_RATIO).
"""

from __future__ import annotations

import math

import torch

from rl_plasticity.config import Range
from rl_plasticity.core.optim import Optimizer, flat_state, flat_views, flatten


class FlatStateOptimizer(Optimizer):
    """An optimizer whose state lives in one [R, N] tensor per state name (N: the weights of one replica).

    The per-weight step-size optimizers do a dozen elementwise operations per step; on the supervised streams'
    small nets (regression's 20-5-1: four tensors) the cost is dispatch, not arithmetic, and one operation over
    every weight costs what one over a single tensor does. Each parameter's state is a view of the buffers
    (`state[name][i]`), so per-unit resets, state_dict and load_state_dict work as for any optimizer; the
    step (`_step`, also a buffer with views) reaches the parameters in one foreach subtraction.
    """

    def __init__(self, params, lr: float, weight_decay: float = 0.0):
        super().__init__(params, lr, weight_decay)
        self.flat: dict[str, torch.Tensor] = {}
        if not self.params:
            return
        layout = flat_state(self.params, {**self.fresh_state, "step": 0.0})
        if layout is None:
            raise ValueError(f"{self.label} needs every parameter with the same replica count, dtype and device")
        buffers, views = layout
        self._step, self._step_views = buffers.pop("step"), views.pop("step")  # the step, a buffer with views
        self.flat, self.state = buffers, views
        self.sizes = [p[0].numel() for p in self.params]

    def _views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Each parameter's part of a [R, N] tensor, shaped like the parameter (views, not copies)."""
        return flat_views(flat, self.params, self.sizes)

    def _flatten(self, tensors) -> torch.Tensor:
        """Tensors shaped like the parameters -> one new [R, N] tensor."""
        return flatten(tensors)

    def _apply_step(self) -> None:
        """w <- w - step, for the step written into self._step."""
        torch._foreach_sub_(self.params, self._step_views)

    def _per_replica_sum(self, flat: torch.Tensor) -> torch.Tensor:
        """[R, N] -> [R]: summed parameter by parameter, then over parameters (the order a per-tensor loop sums in,
        so the numbers do not depend on the state's layout)."""
        return torch.stack([part.sum(1) for part in flat.split(self.sizes, 1)]).sum(0)


class StepSizeOptimizer(FlatStateOptimizer):
    """What IDBD and Autostep share: the curvature estimate c_i and the coupled weight decay."""

    def _gradient_and_curvature(self, grads, curvature) -> tuple[torch.Tensor, torch.Tensor]:
        """g (with the L2 penalty's gradient) and c (g_loss^2 unless given, plus the penalty's wd), flat [R, N]."""
        g = self._flatten(grads)
        c = g * g if curvature is None else self._flatten(curvature)
        if self.weight_decay:
            c.add_(self.weight_decay)
            g.add_(self._flatten(self.params), alpha=self.weight_decay)
        return g, c


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
        if not self.params:
            return
        g, c = self._gradient_and_curvature(grads, curvature)
        beta, h = self.flat["beta"], self.flat["h"]
        beta.add_(g * h, alpha=-self.meta_step_size)
        alpha = beta.exp()
        step = torch.mul(alpha, g, out=self._step)  # alpha_i * g_i
        self._apply_step()
        decay = (alpha * c).neg_().add_(1.0).clamp_min_(0.0)  # [1 - alpha_i c_i]^+
        h.mul_(decay).sub_(step)

    def step_sizes(self) -> list[torch.Tensor]:
        return self._views(self.flat["beta"].exp()) if self.params else []


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
        alpha, h, v = self.flat["alpha"], self.flat["h"], self.flat["v"]
        z = g * h  # -delta x_i h_i: the meta-gradient of log alpha_i
        abs_z = z.abs()
        torch.maximum(abs_z, v + alpha * c * (abs_z - v) / self.tau, out=v)
        # Unchanged while v_i = 0 (then z_i = 0 too, as v_i >= |z_i|, and the factor is exp(-0) = 1 exactly).
        alpha.mul_(torch.exp(-self.meta_step_size * z / torch.where(v > 0, v, 1.0)))
        # M per replica: the effective step of all that replica's weights, at least 1.
        alpha.div_(self._per_replica_sum(alpha * c).clamp_min(1.0).unsqueeze(1))
        step = torch.mul(alpha, g, out=self._step)
        self._apply_step()
        h.mul_(1 - alpha * c).sub_(step)

    def step_sizes(self) -> list[torch.Tensor]:
        return self._views(self.flat["alpha"].clone()) if self.params else []


# --------------------------------------------------------------------------- metrics of learned step sizes

# A weight's step size has collapsed when it is below `log.collapsed_step_size`; null (the default) means this
# fraction of the initial step size (`optimizer.lr`). At a hundredth of its start a weight needs a hundred times
# as many examples to move as far (a regression phase of 10,000 examples then teaches it what 100 did), and
# IDBD's own change of log alpha is proportional to alpha, so it also recovers a hundred times slower: a weight
# that has practically stopped learning, a loss of plasticity that dormant-unit counts do not see.
COLLAPSE_RATIO = 1e-2
STEP_SIZE_LOG_DEFAULTS = {"collapsed_step_size": None}
STEP_SIZE_LOG_RULES = {"log.collapsed_step_size": Range(low=0, low_open=True)}
QUANTILES = (0.05, 0.5, 0.95)


def collapse_threshold(cfg: dict) -> float:
    """The step size below which a weight counts as collapsed, from a resolved config."""
    given = cfg["log"]["collapsed_step_size"]
    return COLLAPSE_RATIO * cfg["optimizer"]["lr"] if given is None else float(given)


@torch.no_grad()
def step_size_metrics(optimizer: Optimizer, net, collapsed: float
                      ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The learned step sizes of each layer's weights (biases left out, as the other weight metrics do), per
    replica: scalars {'layer0/step_size_q05': [R], q50, q95, 'layer0/step_size_collapsed_fraction': [R]} and,
    for histograms, {'layer0/step_size_log10': [R, weights]}. Both empty for optimizers without step sizes."""
    sizes = optimizer.step_sizes()
    if sizes is None:
        return {}, {}
    by_param = dict(zip(optimizer.params, sizes))
    scalars, histograms = {}, {}
    for i, layer in enumerate(net.layers):
        alpha = by_param.get(layer.weight)
        if alpha is None:
            continue
        alpha = alpha.flatten(1).double()
        ordered = alpha.sort(1).values
        for level in QUANTILES:  # torch.quantile's linear interpolation, without its limit of 2^24 values
            position = level * (ordered.shape[1] - 1)
            below, above = ordered[:, math.floor(position)], ordered[:, math.ceil(position)]
            scalars[f"layer{i}/step_size_q{round(level * 100):02d}"] = below + (above - below) * (position % 1)
        scalars[f"layer{i}/step_size_collapsed_fraction"] = (alpha < collapsed).double().mean(1)
        histograms[f"layer{i}/step_size_log10"] = alpha.log10()
    return scalars, histograms
