"""L2 Init, regenerative regularisation (Kumar, Marklund & Van Roy, "Maintaining plasticity in continual
learning via regenerative regularization", 2023): L2 regularisation toward the initial parameters,
    L_reg(theta) = L_train(theta) + strength * ||theta - theta_0||_2^2          (the paper's Section 3)
where theta is every trained parameter and theta_0 its value at time step 0. strength defaults to 1e-2, the
one value the paper found best across its problems (its A.2.5 and Tables 3-4; it swept 1e-2 ... 1e-5).

How: `after_loss` adds the penalty to the loss, so its gradient 2 * strength * (theta - theta_0) joins the
loss gradient before the optimizer step and goes through Adam's moments as the paper's loss term does. (A
decoupled pull applied after the step, theta -= lr * 2 * strength * (theta - theta_0), equals this only
for plain SGD without momentum; under Adam it would be a different method, as AdamW is from Adam + L2.)
The penalty is one autograd node whose forward and backward are foreach ops over all parameters, so it
costs about as much as one optimizer step, not one graph per tensor.

Conventions: the factor 2 is the paper's equation. The paper's A.3 writes the SGD update as
(1 - lr * strength) theta + lr * strength * theta_0 (gradient strength * (theta - theta_0)), and the
optimizer's coupled `weight_decay` here also means the gradient weight_decay * theta; to match either,
halve `strength`.

theta_0 is saved when the method is built (after the network's init) and carried in checkpoints. When CBP,
ReDo or a head reset re-initialises units, theta_0 stays the original init: the paper regularises toward
the fixed theta_0 of time step 0, and its ablation finds that regularising toward a fresh random draw instead
works worse. The penalty acts on every trained parameter, as the paper's theta is the whole parameter
vector (and as the optimizer's weight decay does here): biases, PPO's log_std (pulled toward its init, 0)
and the scales and shifts of batch norm and layer norm (toward 1 and 0); batch-norm running statistics are
buffers, not parameters, and are left alone. Replicas are independent: the penalty is a sum over replicas, so each
replica's gradient is its own 2 * strength * (theta_r - theta_0r).
"""

from __future__ import annotations

import torch

from rl_plasticity.config import Range
from rl_plasticity.core.methods.base import PlasticityMethod

# The `l2_init` config section: its defaults and rules, declared here only.
DEFAULTS = {"enabled": False, "strength": 1e-2}
RULES = {"strength": Range(low=0)}


class _PullToInit(torch.autograd.Function):
    """strength * sum_i ||p_i - p0_i||^2 as one node: foreach in the forward and in the backward."""

    @staticmethod
    def forward(ctx, strength: float, initial: list[torch.Tensor], *params: torch.Tensor) -> torch.Tensor:
        diffs = torch._foreach_sub(params, initial)
        ctx.diffs, ctx.strength = diffs, strength
        return torch.stack(torch._foreach_norm(diffs)).square().sum() * strength

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, None, *torch._foreach_mul(ctx.diffs, grad * (2 * ctx.strength))


class L2Init(PlasticityMethod):
    name, label, defaults, rules = "l2_init", "L2 Init", DEFAULTS, RULES

    def __init__(self, params: list[torch.nn.Parameter], strength: float = DEFAULTS["strength"]):
        self.check(locals())
        self.params, self.strength = list(params), strength
        self.initial = [p.detach().clone() for p in self.params]

    @classmethod
    def from_config(cls, section, target):
        return cls(target.params, **cls.options(section))

    def penalty(self) -> torch.Tensor:
        """strength * ||theta - theta_0||^2, summed over replicas, with its exact gradient."""
        return _PullToInit.apply(self.strength, self.initial, *self.params)

    def after_loss(self, learner, loss: torch.Tensor) -> torch.Tensor:
        return loss + self.penalty() if self.strength else loss

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        """||theta - theta_0|| of each replica, averaged over replicas."""
        squares = sum((p - p0).square().flatten(1).sum(1) for p, p0 in zip(self.params, self.initial))
        return {"distance_to_init": float(squares.sqrt().mean())}

    def state_dict(self) -> dict:
        return {"initial": [t.clone() for t in self.initial]}

    def load_state_dict(self, sd: dict) -> None:
        saved = sd["initial"]
        if len(saved) != len(self.initial) or any(a.shape != b.shape for a, b in zip(saved, self.initial)):
            raise ValueError("checkpoint's L2 Init initial parameters do not match this network's shapes")
        for dst, src in zip(self.initial, saved):
            dst.copy_(src)
