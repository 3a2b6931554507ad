"""The learner core's step-size optimizers as real `torch.optim.Optimizer`s, for any model's parameters.

- `UPGD`: utility-based perturbed gradient descent (Elsayed & Mahmood, ICLR 2024, Algorithm 1, first-order
  global variant): core/upgd.py has the equations and where the toolkit departs from the reference code;
- `IDBD` (Sutton 1992, Figure 2) and `Autostep` (Mahmood, Sutton, Degris & Pilarski 2012, Algorithm 1), in the
  gradient form for a network with the squared gradient as curvature: core/step_size.py;
- `MetaAdam`: Adam whose step is scaled per weight by a step size that IDBD's meta-gradient learns, with
  MetaOptimize's discounted Hessian-free trace (Sharifnassab, Salehkaleybar & Sutton, ICML 2025): core/meta_adam.py.

The arithmetic is the core's own code (optim.py's `_CoreBacked` runs it): each param group's tensors are shown
to the core with a replica axis of 1 (views: its updates write into the parameters), so a step here equals
the core optimizer's step on the same weights and gradients. A weight's learned step size starts at the
group's `lr` when its state is first made or reset (changing `lr` later changes only that: the step sizes
are learned). A unit that a plasticity method re-initialises gets the state of a fresh parameter exactly
(`reset_units`: step size `lr`, traces 0; MetaAdam's moments 0 and bias-correction powers 1).

UPGD's eta, the largest utility trace, is taken over every parameter the optimizer steps, across its param
groups, as the reference code does; its noise comes from `generator` (torch's global generator if None; it
may be set as the attribute `generator` until the first step), one draw per param group (with one group, the
core's one draw).
"""

from __future__ import annotations

import torch

from rl_plasticity.core.meta_adam import MetaAdam as CoreMetaAdam
from rl_plasticity.core.step_size import IDBD as CoreIDBD
from rl_plasticity.core.step_size import Autostep as CoreAutostep
from rl_plasticity.core.upgd import UPGD as CoreUPGD
from rl_plasticity.integrations.optim import _CoreBacked


def _with_replica(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.unsqueeze(0) for t in tensors]


class _ReplicaBacked(_CoreBacked):
    """A core optimizer that reads per-replica shapes: it sees every tensor with a replica axis of 1."""

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        self._new_core(self.param_groups[-1], [])  # the core's constructor checks the group's options

    def _fresh_state(self, group: dict) -> dict[str, float]:
        """The core's fresh state for the group's options (a learned step size starts at lr)."""
        key = repr([(k, v) for k, v in group.items() if k != "params"])
        memo = self.__dict__.setdefault("_fresh_memo", {})
        if key not in memo:
            memo[key] = self._new_core(group, []).fresh_state
        return memo[key]

    def _bind(self, core_opt, params, fresh) -> None:
        core_opt.state = {name: _with_replica([self.state[p][name] for p in params]) for name in fresh}

    def _step_group(self, core_opt, params) -> None:
        core_opt.step(_with_replica([p.grad for p in params]))


class _FlatBacked(_ReplicaBacked):
    """A core optimizer whose state lives in one flat buffer per name (core/step_size.py FlatStateOptimizer):
    the buffers are the storage, and `self.state[p]` holds views of them (saved and reset through them)."""

    def _bind(self, core_opt, params, fresh) -> None:
        mine = set(map(id, params))  # a parameter's state lives in one core's buffers: drop cores that shared it
        self._cores = {k: c for k, c in self._cores.items() if not mine & set(k[0])}
        for name in fresh:
            for p, view in zip(params, core_opt.state[name]):
                view.copy_(self.state[p][name].unsqueeze(0))
                self.state[p][name] = view[0]

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)  # the next step copies the loaded state into new buffers

    @staticmethod
    def _step_size(state: dict) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def step_sizes(self) -> list[torch.Tensor]:
        """Every parameter's learned step sizes, shaped like it, in the param groups' order (a parameter
        never stepped: its group's lr)."""
        return [self._step_size(self.state[p]) if self.state.get(p) else torch.full_like(p, group["lr"])
                for group in self.param_groups for p in group["params"]]


class UPGD(_ReplicaBacked):
    """UPGD (Elsayed & Mahmood 2024): useful weights (high utility -g*w) are protected, the others take the
    gradient step plus Gaussian noise of std `sigma`. weight_decay is decoupled, as in the paper."""

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.0, beta_utility: float = 0.999,
                 sigma: float = 0.001, generator: torch.Generator | None = None):
        self.generator = generator
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "beta_utility": beta_utility,
                                  "sigma": sigma})

    def _fresh_state(self, group):
        return CoreUPGD.fresh_state

    def _new_core(self, group, params):
        return CoreUPGD(_with_replica(params), group["lr"], weight_decay=group["weight_decay"],
                        beta_utility=group["beta_utility"], sigma=group["sigma"],
                        generators=[self.generator] if params else [])

    def _sync(self, core_opt, group):
        super()._sync(core_opt, group)
        core_opt.beta_utility, core_opt.sigma = group["beta_utility"], group["sigma"]

    def _step_groups(self, work) -> None:
        grads = [_with_replica([p.grad for p in params]) for _, params in work]
        if work:  # eta: the largest trace over every group's weights
            eta = torch.stack([core_opt.update_utilities(g) for (core_opt, _), g in zip(work, grads)]).amax(0)
            for (core_opt, _), g in zip(work, grads):
                core_opt.perturbed_step(g, eta)


class IDBD(_FlatBacked):
    """IDBD (Sutton 1992): a step size exp(beta_i) per weight, learned by meta-gradient descent with meta step
    size `meta_step_size`; lr is every weight's initial step size. weight_decay is coupled L2."""

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.0, meta_step_size: float = 0.01):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "meta_step_size": meta_step_size})

    @staticmethod
    def _step_size(state):
        return state["beta"].exp()

    def _new_core(self, group, params):
        return CoreIDBD(_with_replica(params), group["lr"], weight_decay=group["weight_decay"],
                        meta_step_size=group["meta_step_size"])

    def _sync(self, core_opt, group):
        super()._sync(core_opt, group)
        core_opt.meta_step_size = group["meta_step_size"]


class Autostep(_FlatBacked):
    """Autostep (Mahmood et al. 2012): IDBD with a normalised meta-gradient (time scale `tau`) and the effective
    step of all the group's weights bounded by 1; lr is every weight's initial step size."""

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.0, meta_step_size: float = 0.01,
                 tau: float = 10000.0):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "meta_step_size": meta_step_size,
                                  "tau": tau})

    @staticmethod
    def _step_size(state):
        return state["alpha"].clone()

    def _new_core(self, group, params):
        return CoreAutostep(_with_replica(params), group["lr"], weight_decay=group["weight_decay"],
                            meta_step_size=group["meta_step_size"], tau=group["tau"])

    def _sync(self, core_opt, group):
        super()._sync(core_opt, group)
        core_opt.meta_step_size, core_opt.tau = group["meta_step_size"], group["tau"]


class MetaAdam(_FlatBacked):
    """Adam (coupled L2, per-element bias corrections) whose step is scaled per weight by a learned step size
    alpha (starting at lr); meta_step_size 0 is Adam. trace_decay is the meta-gradient's discount."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 meta_step_size: float = 0.01, trace_decay: float = 0.99):
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                                  "meta_step_size": meta_step_size, "trace_decay": trace_decay})

    @staticmethod
    def _step_size(state):
        return state["log_alpha"].exp()

    def _new_core(self, group, params):
        return CoreMetaAdam(_with_replica(params), group["lr"], betas=group["betas"], eps=group["eps"],
                            weight_decay=group["weight_decay"], meta_step_size=group["meta_step_size"],
                            trace_decay=group["trace_decay"])

    def _sync(self, core_opt, group):
        super()._sync(core_opt, group)
        (core_opt.beta1, core_opt.beta2), core_opt.eps = group["betas"], group["eps"]
        core_opt.meta_step_size, core_opt.trace_decay = group["meta_step_size"], group["trace_decay"]

    def _step_group(self, core_opt, params):
        # The bound on beta^t that picks the core's fast path, kept per parameter in the state (saved with it).
        core_opt.max_power = max(self.state[p].get("max_power", 1.0) for p in params)
        super()._step_group(core_opt, params)
        for p in params:
            self.state[p]["max_power"] = core_opt.max_power

    @torch.no_grad()
    def reset_units(self, pu, mask):
        super().reset_units(pu, mask)
        if pu.param in self.state and bool(mask.any()):
            self.state[pu.param]["max_power"] = 1.0
