"""Adam and SGD as real `torch.optim.Optimizer`s, with the core's exact per-unit state reset.

The arithmetic is the learner core's (rl_plasticity/core/optim.py): Adam (Kingma & Ba, 2015) keeps,
per element, the powers beta1^t and beta2^t its bias corrections need, so resetting a unit's state
(moments 0, powers 1) makes its next update equal a fresh parameter's. These classes wrap that code
in torch's optimizer protocol: param groups, `state_dict`/`load_state_dict`, closures, LR schedulers
(they read `group["lr"]` at every step) and step hooks.

`StateReset` adapts any other torch optimizer: it zeroes the state entries of a unit that are zero
for a fresh parameter (Adam's moments, momentum buffers) and warns once where it cannot be exact
(torch's Adam keeps one step count per tensor, so a reset unit keeps the tensor's bias correction).
"""

from __future__ import annotations

import warnings

import torch

from rl_plasticity.core import optim as core
from rl_plasticity.core.units import ParamUnits


class _CoreBacked(torch.optim.Optimizer):
    """Runs a core optimizer over each param group's parameters that have gradients.

    The core optimizer's state lists are the very tensors in `self.state[p]`, so torch's state_dict
    saves them and unit resets write into them. A core object per (group, set of parameters with
    gradients) is cached; hyperparameters are copied from the group at every step.
    """

    def _fresh_state(self, group: dict) -> dict[str, float]:
        raise NotImplementedError

    def _new_core(self, group: dict, params: list[torch.Tensor]):
        raise NotImplementedError

    def _sync(self, core_opt, group: dict) -> None:
        core_opt.lr, core_opt.weight_decay = group["lr"], group["weight_decay"]

    def __init__(self, params, defaults: dict):
        super().__init__(params, defaults)
        self._cores: dict[tuple, object] = {}

    def _core_for(self, group: dict, params: list[torch.Tensor]):
        fresh = self._fresh_state(group)
        key = (tuple(map(id, params)), tuple(fresh))
        core_opt = self._cores.get(key)
        if core_opt is None:
            for p in params:
                state = self.state[p]
                for name, value in fresh.items():
                    if name not in state:
                        state[name] = torch.full_like(p, value, memory_format=torch.preserve_format)
            core_opt = self._new_core(group, params)
            self._bind(core_opt, params, fresh)
            self._cores[key] = core_opt
        self._sync(core_opt, group)
        return core_opt

    def _bind(self, core_opt, params: list[torch.Tensor], fresh: dict) -> None:
        """Make the core optimizer's state lists the tensors of `self.state`."""
        core_opt.state = {name: [self.state[p][name] for p in params] for name in fresh}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = []  # (core optimizer, its parameters) of every group with gradients
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                work.append((self._core_for(group, params), params))
        self._step_groups(work)
        return loss

    def _step_groups(self, work: list[tuple[object, list[torch.Tensor]]]) -> None:
        for core_opt, params in work:
            self._step_group(core_opt, params)

    def _step_group(self, core_opt, params: list[torch.Tensor]) -> None:
        core_opt.step([p.grad for p in params])

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._cores.clear()  # torch replaced the state tensors: rebind on the next step

    def _group_of(self, param: torch.Tensor) -> dict:
        for group in self.param_groups:
            if any(p is param for p in group["params"]):
                return group
        raise ValueError("reset_units: the parameter is not optimized by this optimizer")

    @torch.no_grad()
    def reset_units(self, pu: ParamUnits, mask: torch.Tensor) -> None:
        """Make the state of the units in mask [R, U] equal a fresh parameter's (the core's interface)."""
        state = self.state.get(pu.param)
        if not state:
            return  # never stepped: the state is fresh already
        for name, value in self._fresh_state(self._group_of(pu.param)).items():
            if name in state:
                pu.units(state[name])[mask] = value


class Adam(_CoreBacked):
    """Adam with coupled L2 weight decay and exact per-unit state reset (per-element bias corrections).

    Same arguments as `torch.optim.Adam` (lr, betas, eps, weight_decay); for a never-reset
    parameter its updates equal torch's to float rounding.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        if not lr >= 0 or not eps > 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"Adam needs lr >= 0, eps > 0, weight_decay >= 0 and betas in [0, 1); got lr={lr}, "
                             f"eps={eps}, weight_decay={weight_decay}, betas={betas}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    def _fresh_state(self, group):
        return core.Adam.fresh_state

    def _new_core(self, group, params):
        # Per tensor: its state is the tensors of torch's `self.state` (bound after), not flat buffers.
        return core.Adam(params, group["lr"], betas=group["betas"], eps=group["eps"],
                         weight_decay=group["weight_decay"], per_tensor=True)

    def _sync(self, core_opt, group):
        super()._sync(core_opt, group)
        core_opt.beta1, core_opt.beta2 = group["betas"]
        core_opt.eps = group["eps"]

    def _step_group(self, core_opt, params):
        # The per-tensor bound on beta^t that picks the core's fast path lives in the state (saved with it).
        core_opt.max_power = [self.state[p].get("max_power", 1.0) for p in params]
        super()._step_group(core_opt, params)
        for p, power in zip(params, core_opt.max_power):
            self.state[p]["max_power"] = power

    @torch.no_grad()
    def reset_units(self, pu, mask):
        super().reset_units(pu, mask)
        if pu.param in self.state and bool(mask.any()):
            self.state[pu.param]["max_power"] = 1.0


class SGD(_CoreBacked):
    """SGD with optional heavy-ball momentum (no dampening, as torch's default) and coupled L2 weight
    decay; a replaced unit's momentum buffer is reset exactly (a zero buffer is a fresh one)."""

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, weight_decay: float = 0.0):
        if not lr >= 0 or not 0 <= momentum < 1 or weight_decay < 0:
            raise ValueError(f"SGD needs lr >= 0, momentum in [0, 1) and weight_decay >= 0; got lr={lr}, "
                             f"momentum={momentum}, weight_decay={weight_decay}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    def _fresh_state(self, group):
        return {"momentum": 0.0} if group["momentum"] else {}

    def _new_core(self, group, params):
        return core.SGD(params, group["lr"], momentum=group["momentum"], weight_decay=group["weight_decay"])

    def _sync(self, core_opt, group):
        super()._sync(core_opt, group)
        core_opt.momentum = group["momentum"]


# State entries of torch's optimizers whose fresh value is zero, element by element.
_ZERO_WHEN_FRESH = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "square_avg", "grad_avg")


class StateReset:
    """The core's `reset_units` for any torch optimizer.

    Per-element state that is zero when fresh is zeroed for the replaced units. A per-tensor step
    count cannot be reset per unit: the first reset of such an optimizer warns once (use
    `rl_plasticity.Adam` for an exact reset). Unknown per-element state is left as it is, with a warning.
    """

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self._warned: set[str] = set()

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=4)

    @torch.no_grad()
    def reset_units(self, pu: ParamUnits, mask: torch.Tensor) -> None:
        state = self.optimizer.state.get(pu.param)
        if not state or not bool(mask.any()):
            return
        name = type(self.optimizer).__name__
        for key, value in state.items():
            if key in _ZERO_WHEN_FRESH and isinstance(value, torch.Tensor) and value.shape == pu.param.shape:
                pu.units(value)[mask] = 0.0
            elif key == "step" and "exp_avg" in state:  # Adam's family: the step sets the bias correction
                self._warn_once("step", f"{name} keeps one step count per tensor, so the replaced units' moments "
                                        "were reset but their bias correction continues from the tensor's step; "
                                        "use rl_plasticity.Adam for an exact per-unit reset")
            elif isinstance(value, torch.Tensor) and value.shape == pu.param.shape:
                self._warn_once(key, f"{name} state {key!r} cannot be reset per unit and was left as it is")


def unit_resetter(optimizer):
    """The object plasticity methods call `reset_units` on: the optimizer itself if it resets exactly."""
    return optimizer if hasattr(optimizer, "reset_units") else StateReset(optimizer)
