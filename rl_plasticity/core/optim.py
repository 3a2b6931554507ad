"""SGD and Adam with coupled L2 weight decay and a per-unit optimizer-state reset.

When a plasticity method replaces a unit, the unit's parameters are new and their optimizer state
must be what a fresh parameter would have. torch's Adam keeps ONE step counter per tensor, so a
replaced unit inside a long-trained tensor would get the old step's bias correction (1 - beta^t ~ 1)
and its first updates would be far too small. Here Adam keeps a step counter per element: resetting
a unit zeroes its moments AND its step, and its next update equals a fresh parameter's exactly.

Optimizers take the gradients as a list (from torch.autograd.grad) instead of reading .grad, which
saves zeroing grads every step.
"""

from __future__ import annotations

import torch

from rl_plasticity.core.units import ParamUnits


class Optimizer:
    state_names: tuple[str, ...] = ()

    def __init__(self, params, lr: float, weight_decay: float = 0.0):
        self.params = list(params)
        self.lr, self.weight_decay = lr, weight_decay
        self.state = {name: [torch.zeros_like(p) for p in self.params] for name in self.state_names}
        self._index = {id(p): i for i, p in enumerate(self.params)}

    def _decayed(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """Coupled L2: the penalty's gradient is added to the loss gradient (as the paper's learners do)."""
        if self.weight_decay == 0:
            return list(grads)
        return torch._foreach_add(grads, self.params, alpha=self.weight_decay)

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor]) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def reset_units(self, pu: ParamUnits, mask: torch.Tensor) -> None:
        """Make the state of the units in mask [R, U] equal a fresh parameter's; leave the rest untouched."""
        i = self._index[id(pu.param)]
        for tensors in self.state.values():
            pu.units(tensors[i])[mask] = 0

    def state_dict(self) -> dict:
        return {"state": {k: [t.clone() for t in v] for k, v in self.state.items()}}

    def load_state_dict(self, sd: dict) -> None:
        for k, tensors in sd["state"].items():
            for dst, src in zip(self.state[k], tensors):
                dst.copy_(src)


class SGD(Optimizer):
    """SGD with optional (heavy-ball, undampened) momentum. A zero momentum buffer is a fresh one:
    the first step then uses the plain gradient, as torch's SGD does."""

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        self.state_names = ("momentum",) if momentum else ()
        super().__init__(params, lr, weight_decay)
        self.momentum = momentum

    @torch.no_grad()
    def step(self, grads):
        grads = self._decayed(grads)
        if self.momentum:
            bufs = self.state["momentum"]
            torch._foreach_mul_(bufs, self.momentum)
            torch._foreach_add_(bufs, grads)
            grads = bufs
        torch._foreach_add_(self.params, grads, alpha=-self.lr)


class Adam(Optimizer):
    """Adam (Kingma & Ba) with a per-element step count for exact per-unit resets."""

    state_names = ("exp_avg", "exp_avg_sq", "step")

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, lr, weight_decay)
        self.beta1, self.beta2 = betas
        self.eps = eps

    @torch.no_grad()
    def step(self, grads):
        grads = self._decayed(grads)
        m, v, t = self.state["exp_avg"], self.state["exp_avg_sq"], self.state["step"]
        torch._foreach_add_(t, 1.0)
        torch._foreach_lerp_(m, grads, 1 - self.beta1)
        torch._foreach_mul_(v, self.beta2)
        torch._foreach_addcmul_(v, grads, grads, value=1 - self.beta2)
        # Bias corrections per element: 1 - beta^t.
        bc1 = torch._foreach_pow(self.beta1, t)
        torch._foreach_sub_(bc1, 1.0)  # beta^t - 1 = -(1 - beta^t)
        bc2 = torch._foreach_pow(self.beta2, t)
        torch._foreach_neg_(bc2)
        torch._foreach_add_(bc2, 1.0)
        torch._foreach_sqrt_(bc2)
        # update = -lr * (m / bc1) / (sqrt(v) / sqrt(bc2) + eps) = lr * m / (bc1' * (sqrt(v)/sqrt(bc2) + eps))
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, bc2)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_mul_(denom, bc1)  # negative: carries the minus sign of the descent step
        torch._foreach_addcdiv_(self.params, m, denom, value=self.lr)


def build_optimizer(params, name: str, lr: float, momentum: float = 0.0, betas=(0.9, 0.999),
                    eps: float = 1e-8, weight_decay: float = 0.0) -> Optimizer:
    if name == "sgd":
        return SGD(params, lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return Adam(params, lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; expected 'sgd' or 'adam'")
