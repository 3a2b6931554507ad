"""SGD and Adam with coupled L2 weight decay and a per-unit optimizer-state reset.

When a plasticity method replaces a unit, the unit's parameters are new and their optimizer state
must be what a fresh parameter would have. torch's Adam keeps ONE step counter per tensor, so a
replaced unit inside a long-trained tensor would get the old step's bias correction (1 - beta^t ~ 1)
and its first updates would be far too small. Here Adam keeps, per element, the running powers
beta1^t and beta2^t that its bias corrections need (a step count per element, in the form that
costs one multiply per step instead of a power): resetting a unit zeroes its moments and sets its
powers back to 1 (t = 0), and its next update equals a fresh parameter's exactly.

Optimizers take the gradients as a list (from torch.autograd.grad) instead of reading .grad, which
saves zeroing grads every step.

Each optimizer also owns its part of the config's `optimizer` section, once: `name` (the value of
`optimizer.name`), `defaults` and `rules` (its own keys; `lr` and `weight_decay` are shared by all) and
`from_config`. SGD's and Adam's keys sit directly in the section (`optimizer.momentum`, the shape configs
have always had); any other optimizer's sit in a subsection named after it (`optimizer.upgd.sigma`).
rl_plasticity.core.builders registers them (OPTIMIZERS) and derives the section from the registry.
"""

from __future__ import annotations

from typing import Any

import torch

from rl_plasticity.config import Numbers, Range, Rule, check_options
from rl_plasticity.core.units import ParamUnits

# The keys every optimizer shares; the constructors check them too.
COMMON_RULES = {"lr": Range(low=0, low_open=True), "weight_decay": Range(low=0)}


class Optimizer:
    name = "optimizer"  # the value of `optimizer.name` that picks it
    label = "optimizer"  # how the constructor's error messages name it
    defaults: dict[str, Any] = {}  # its own config keys and their defaults (lr and weight_decay are shared)
    rules: dict[str, Rule] = {}
    flat = False  # True: its keys sit directly in `optimizer` (SGD, Adam); else in `optimizer.<name>`
    # Each state tensor and the value it holds for a fresh parameter.
    fresh_state: dict[str, float] = {}

    def __init__(self, params, lr: float, weight_decay: float = 0.0):
        self.params = list(params)
        self.lr, self.weight_decay = lr, weight_decay
        self.state = {name: [torch.full_like(p, value) for p in self.params]
                      for name, value in self.fresh_state.items()}
        self._index = {id(p): i for i, p in enumerate(self.params)}

    @classmethod
    def options(cls, section: dict) -> dict:
        """Its own keyword arguments from the resolved `optimizer` section."""
        own = section if cls.flat else section[cls.name]
        return {key: own[key] for key in cls.defaults}

    @classmethod
    def from_config(cls, params, section: dict, generators: list[torch.Generator | None]) -> Optimizer:
        """The optimizer of `params` from the resolved `optimizer` section; generators: one per replica."""
        return cls(params, section["lr"], weight_decay=section["weight_decay"], **cls.options(section))

    @classmethod
    def check(cls, options: dict[str, Any]) -> None:
        """Raise ValueError naming the first option that breaks its rule (constructors pass `locals()`)."""
        check_options(cls.label, {**COMMON_RULES, **cls.rules}, options)

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
        for name, tensors in self.state.items():
            pu.units(tensors[i])[mask] = self.fresh_state[name]

    @torch.no_grad()
    def reset_elements(self, param: torch.nn.Parameter, mask: torch.Tensor) -> None:
        """Make the state of the elements in mask (shaped like param) equal a fresh parameter's: each element
        is a unit of reset_units (so an optimizer's own additions there, e.g. Adam's step bound, apply too)."""
        self.reset_units(ParamUnits(param, lambda t: t.view(t.shape[0], -1)), mask.reshape(mask.shape[0], -1))

    def step_sizes(self) -> list[torch.Tensor] | None:
        """Each parameter's per-weight step sizes, shaped like it, for optimizers that learn them (IDBD,
        Autostep, MetaAdam: the step-size metrics read them); None for those that have none."""
        return None

    def state_dict(self) -> dict:
        return {"state": {k: [t.clone() for t in v] for k, v in self.state.items()}}

    def load_state_dict(self, sd: dict) -> None:
        for k, tensors in sd["state"].items():
            for dst, src in zip(self.state[k], tensors):
                dst.copy_(src)


class SGD(Optimizer):
    """SGD with optional (heavy-ball, undampened) momentum. A zero momentum buffer is a fresh one:
    the first step then uses the plain gradient, as torch's SGD does."""

    name, label, flat = "sgd", "SGD", True
    defaults = {"momentum": 0.0}
    rules = {"momentum": Range(low=0, high=1, high_open=True)}

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        self.fresh_state = {"momentum": 0.0} if momentum else {}
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


def flat_state(params: list[torch.Tensor], fresh_state: dict[str, float]):
    """({name: one [R, N] buffer}, {name: each parameter's part of it, shaped like the parameter}) for
    parameters that share their replica count R, dtype and device (N: the elements of one replica); None
    for parameters that do not. The parts are views, so per-unit resets and state loads write the buffers."""
    if not params:
        return None
    first = params[0]
    if any((p.dim() == 0) or (p.shape[0], p.dtype, p.device) != (first.shape[0], first.dtype, first.device)
           for p in params):
        return None
    sizes = [p[0].numel() for p in params]
    shape = (first.shape[0], sum(sizes))
    buffers = {name: torch.full(shape, value, dtype=first.dtype, device=first.device)
               for name, value in fresh_state.items()}
    return buffers, {name: flat_views(buf, params, sizes) for name, buf in buffers.items()}


def flat_views(flat: torch.Tensor, params: list[torch.Tensor], sizes: list[int]) -> list[torch.Tensor]:
    """Each parameter's part of a [R, N] tensor, shaped like the parameter (views, not copies)."""
    return [part.view(p.shape) for part, p in zip(flat.split(sizes, 1), params)]


def flatten(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Tensors shaped like the parameters ([R, ...] each) -> one new [R, N] tensor."""
    return torch.cat([t.reshape(t.shape[0], -1) for t in tensors], 1)


class Adam(Optimizer):
    """Adam (Kingma & Ba) with per-element bias-correction powers for exact per-unit resets.

    Once beta^t is so small that 1 - beta^t rounds to exactly 1 for every element of a tensor, the
    bias corrections are the identity and that tensor takes the plain (cheaper) update, which is
    bit-identical. A unit reset sends its tensor back to the corrected path until it is old again.

    Speed: with parameters of one replica count, dtype and device (every learner of this toolkit's), the
    state lives in one [R, N] buffer per name and each parameter's state is a view of it, so a step is a
    dozen operations over every weight at once instead of a dozen per tensor. While any tensor is young,
    every element takes the corrected formula: for an old element it is bit-identical to the plain one
    (its 1 - beta^t is exactly 1, so the corrections divide and multiply by exactly 1 and -1).
    `per_tensor=True` keeps the state per tensor (as does an owner that rebinds `state` to its own tensors);
    tests/test_methods.py checks the flat step against it, bit for bit.
    """

    name, label, flat = "adam", "Adam", True
    defaults = {"betas": [0.9, 0.999], "eps": 1e-8}
    rules = {"betas": Numbers(2, Range(low=0, high=1, high_open=True)), "eps": Range(low=0, low_open=True)}
    fresh_state = {"exp_avg": 0.0, "exp_avg_sq": 0.0, "beta1_power": 1.0, "beta2_power": 1.0}

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 per_tensor: bool = False):
        super().__init__(params, lr, weight_decay)
        self.beta1, self.beta2 = betas
        self.eps = eps
        # Per tensor: an upper bound of its elements' beta2^t and beta1^t, and the size below which
        # 1 - beta^t rounds to 1 in its dtype.
        self.max_power = [1.0] * len(self.params)
        self.negligible = [torch.finfo(p.dtype).eps / 4 for p in self.params]
        layout = None if per_tensor else flat_state(self.params, self.fresh_state)
        self._buffers = None
        if layout is not None:
            self._buffers, self.state = layout
            self._flat_state = self.state  # an owner that rebinds `state` to its own tensors gets the per-tensor step
            self._sizes = [p[0].numel() for p in self.params]
            self._denom = torch.empty_like(self._buffers["exp_avg"])
            self._correction = torch.empty_like(self._denom)  # scratch for the bias corrections
            self._denom_views = flat_views(self._denom, self.params, self._sizes)

    @torch.no_grad()
    def step(self, grads):
        grads = self._decayed(grads)
        if self._buffers is not None and self.state is self._flat_state:
            return self._flat_step(grads)
        m, v = self.state["exp_avg"], self.state["exp_avg_sq"]
        torch._foreach_lerp_(m, grads, 1 - self.beta1)
        torch._foreach_mul_(v, self.beta2)
        torch._foreach_addcmul_(v, grads, grads, value=1 - self.beta2)
        young = [i for i, (p, tiny) in enumerate(zip(self.max_power, self.negligible)) if p >= tiny]
        old = [i for i, (p, tiny) in enumerate(zip(self.max_power, self.negligible)) if p < tiny]
        if old:
            denom = torch._foreach_sqrt([v[i] for i in old])
            torch._foreach_add_(denom, self.eps)
            torch._foreach_addcdiv_([self.params[i] for i in old], [m[i] for i in old], denom, value=-self.lr)
        if young:
            self._corrected_step(young)

    def _flat_step(self, grads: list[torch.Tensor]) -> None:
        """The step on the flat buffers: the same operations, element by element, as the per-tensor step."""
        b, denom, bc = self._buffers, self._denom, self._correction
        g = flatten(grads)
        m, v = b["exp_avg"], b["exp_avg_sq"]
        m.lerp_(g, 1 - self.beta1)
        v.mul_(self.beta2)
        v.addcmul_(g, g, value=1 - self.beta2)
        torch.sqrt(v, out=denom)
        young = [i for i, (p, tiny) in enumerate(zip(self.max_power, self.negligible)) if p >= tiny]
        if not young:
            denom.add_(self.eps)
            torch._foreach_addcdiv_(self.params, self.state["exp_avg"], self._denom_views, value=-self.lr)
            return
        p1, p2 = b["beta1_power"].mul_(self.beta1), b["beta2_power"].mul_(self.beta2)
        torch.neg(p2, out=bc).add_(1.0).sqrt_()  # sqrt(1 - beta2^t)
        denom.div_(bc).add_(self.eps)
        torch.sub(p1, 1.0, out=bc)  # -(1 - beta1^t): carries the descent step's minus sign
        denom.mul_(bc)
        torch._foreach_addcdiv_(self.params, self.state["exp_avg"], self._denom_views, value=self.lr)
        for i in young:
            self.max_power[i] *= max(self.beta1, self.beta2)

    def _corrected_step(self, idx: list[int]) -> None:
        """update = -lr * (m / (1 - beta1^t)) / (sqrt(v) / sqrt(1 - beta2^t) + eps), per element."""
        pick = lambda name: [self.state[name][i] for i in idx]  # noqa: E731
        m, v, p1, p2 = pick("exp_avg"), pick("exp_avg_sq"), pick("beta1_power"), pick("beta2_power")
        torch._foreach_mul_(p1, self.beta1)  # beta^t for this step's t
        torch._foreach_mul_(p2, self.beta2)
        bc2_sqrt = torch._foreach_neg(p2)
        torch._foreach_add_(bc2_sqrt, 1.0)
        torch._foreach_sqrt_(bc2_sqrt)
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, self.eps)
        bc1_neg = torch._foreach_sub(p1, 1.0)  # -(1 - beta1^t): carries the descent step's minus sign
        torch._foreach_mul_(denom, bc1_neg)
        torch._foreach_addcdiv_([self.params[i] for i in idx], m, denom, value=self.lr)
        for i in idx:
            self.max_power[i] *= max(self.beta1, self.beta2)

    @torch.no_grad()
    def reset_units(self, pu: ParamUnits, mask: torch.Tensor) -> None:
        super().reset_units(pu, mask)
        if bool(mask.any()):
            self.max_power[self._index[id(pu.param)]] = 1.0

    def state_dict(self) -> dict:
        return {**super().state_dict(), "max_power": list(self.max_power)}

    def load_state_dict(self, sd: dict) -> None:
        super().load_state_dict(sd)
        self.max_power = [float(p) for p in sd["max_power"]]
