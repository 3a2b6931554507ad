"""Plasticity methods on an ordinary PyTorch model: attach, call `step()` after `optimizer.step()`.

    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 1))
    opt = rl_plasticity.Adam(model.parameters(), lr=1e-3, betas=(0.99, 0.99))
    cbp = rl_plasticity.attach_cbp(model, opt, replacement_rate=1e-4, maturity_threshold=100)
    ...  loss.backward(); opt.step(); cbp.step()

The methods are the learner core's own code (rl_plasticity/core/methods), every one of its registry
`METHODS`: continual backprop (Dohare et al., Nature 2024: utility, bias correction by
1 - d^age, maturity, fractional replacement accumulator, lowest-utility replacement with fresh incoming
and zero outgoing weights), ReDo (Sokar et al., 2023), shrink-and-perturb (Ash & Adams, 2020), the
reset family (head, last layers, whole network, plasticity injection: Nikishin et al., 2023), L2 Init (Kumar et al., 2023), Parseval regularisation
(Chung et al., NeurIPS 2024), selective weight reinitialisation (Hernandez-Garcia et al., 2025), weight
clipping (Elsayed et al., RLJ 2024) and Hare & Tortoise (Lee et al., ICML 2024). The core's Learner drives them (its hook order; every method hears what another
re-initialised). They act on the model's layers through views with a replica axis of 1
(rl_plasticity/integrations/groups.py, methods.py), and they reset a re-initialised unit's optimizer
state: exactly with `rl_plasticity.Adam`/`SGD`, as far as possible (with one warning) with torch's
optimizers.

`Plasticity` is an `nn.Module` with no parameters: its `state_dict()` holds the methods' state and
its random generator, so a checkpoint saves and restores it like the model's; registered as a
submodule (as the Stable-Baselines3 policies do), it travels inside the owner's state_dict.
"""

from __future__ import annotations

import difflib
import warnings
from typing import Any

import torch
from torch import nn

from rl_plasticity.core.learner import Learner
from rl_plasticity.core.methods import METHODS
from rl_plasticity.integrations.finder import UnitsNotFound, build_groups
from rl_plasticity.integrations.methods import (BUILDERS, NEEDS_OPTIMIZER, NEEDS_UNITS, Attachment, check,
                                                check_together)
from rl_plasticity.integrations.optim import unit_resetter


def _options(value, what: str) -> dict | None:
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if isinstance(value, dict):
        return dict(value)
    raise TypeError(f"{what} must be True, False/None or a dict of its options, got {value!r}")


def check_options(name: str, options: dict) -> None:
    """Check a method's options at attach time, against the options and rules the core method declares
    (its `defaults`, less `enabled`, and `rules`): the methods themselves are built on first use."""
    cls = METHODS[name]
    valid = [k for k in cls.defaults if k != "enabled"]
    for key in options:
        if key not in valid:
            match = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
            hint = f" (did you mean {match[0]!r}?)" if match else ""
            raise ValueError(f"unknown {cls.label} option {key!r}{hint}; valid options: {', '.join(valid)}")
    cls.check({**cls.defaults, **options})


class Plasticity(nn.Module):
    """Plasticity methods attached to `model`: any of the core's registry, by config-section name.

    Each method keyword (cbp, redo, snp, reset, l2_init, parseval, swr, weight_clipping, hare_tortoise) is
    None/False (off), True (the core's defaults) or a dict of the options of the method's config section
    (e.g. cbp={"replacement_rate": 1e-4, "maturity_threshold": 10_000, "utility": "contribution"}).
    Several compose, applied in the registry's order, and each is told what the others re-initialise.
    groups: None to find the hidden units automatically, or declared (see `build_groups`).
    init: distribution of a re-initialised unit's or layer's incoming weights: "torch" (nn.Linear/Conv's own
    default, U(+-1/sqrt(fan_in))), "lecun", "kaiming", a gain g for U(+-g*sqrt(3/fan_in)), or a callable.
    seed: seeds the methods' generator (None: drawn from torch's global generator).
    auto_step: call `step()` after every `optimizer.step()` (through the optimizer's step hook).

    The calls: `step()` after every optimizer.step() (SWR reads the step's gradient from p.grad there);
    `loss_term()`, a tensor to add to the loss (L2 Init's and Parseval's penalties; 0 for the others);
    `end_epoch()` and `task_switch()` where a method acts then (hare & tortoise resets, reset and plasticity
    injection at a task switch; injection's frozen parts are added to the model's output by hooks,
    integrations/injection.py). A configuration that acts at a call the loop never
    makes warns once, at the `hook_warning_steps`-th step().
    Attach after moving the model to its device; the methods are built on the model's first forward pass
    with autograd on (or first use), so L2 Init's theta_0 and the tortoise are the weights training starts from.
    """

    hook_warning_steps = 1000

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, groups=None,
                 init="torch", seed: int | None = None, auto_step: bool = False, params=None, **methods):
        super().__init__()
        for name in methods:
            if name not in METHODS:
                match = difflib.get_close_matches(name, list(METHODS), n=1, cutoff=0.6)
                hint = f" (did you mean {match[0]!r}?)" if match else ""
                raise ValueError(f"unknown plasticity method {name!r}{hint}; valid methods: {', '.join(METHODS)}")
        # In the registry's order, the order the core's learner applies them in.
        self.options = {name: _options(methods.get(name), name) for name in METHODS}
        self.options = {name: o for name, o in self.options.items() if o is not None}
        if not self.options:
            raise ValueError(f"no plasticity method enabled: pass one or more of {', '.join(METHODS)}")
        for name, options in self.options.items():
            check_options(name, options)
        for name, options in self.options.items():
            resets_state = {**METHODS[name].defaults, **options}.get("reset_optimizer_state", False)
            if optimizer is None and (name in NEEDS_OPTIMIZER or resets_state):
                raise ValueError(f"{name} resets the optimizer state of the weights it re-initialises: pass the "
                                 "optimizer")
        # Plain lists, so that nn.Module does not register the user's model or layers as submodules.
        self._optimizer = [optimizer]
        needs_units = any(name in NEEDS_UNITS for name in self.options)
        self.groups = build_groups(model, groups, init) if needs_units or groups is not None else []
        if "reset" in self.options and not self.groups:
            try:  # so that a reset tells every method which units are new; none found is no error here
                self.groups = build_groups(model, None, init)
            except UnitsNotFound:
                pass
        seed = int(torch.randint(0, 2**62, ())) if seed is None else int(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self._attachment = [Attachment(model, list(params if params is not None else model.parameters()),
                                       self.groups, None if optimizer is None else unit_resetter(optimizer),
                                       [self.generator], init)]
        for name, options in self.options.items():
            check(name, options, self._attachment[0])
        check_together(list(self.options), self.options)
        self._learner: Learner | None = None
        self._calls = {"step": 0, "loss_term": 0, "end_epoch": 0, "task_switch": 0}
        self._warned = False
        self._handles = [self._hook(g) for g in self.groups]

        def build_on_first_pass(module, inputs):  # a closure, not a bound method: deepcopy(model) copies no self
            if torch.is_grad_enabled() and self._learner is None:
                self.methods  # noqa: B018 (builds them)
        self._handles.append(model.register_forward_pre_hook(build_on_first_pass))
        if auto_step:
            if optimizer is None:
                raise ValueError("auto_step needs the optimizer")
            self._handles.append(optimizer.register_step_post_hook(lambda opt, args, kwargs: self.step()))

    @staticmethod
    def _hook(group):
        def capture(module, inputs):
            if torch.is_grad_enabled():  # a pass that is being learned from, not acting or evaluation
                group.capture(inputs[0])
        return group.outgoing.register_forward_pre_hook(capture)

    @property
    def methods(self) -> dict[str, Any]:
        """The core's method objects, by section name, built on first use where the model's weights then are."""
        if self._learner is None:
            a = self._attachment[0]
            with torch.enable_grad():  # L2 Init's and Parseval's views must carry the penalty's gradient
                built = {name: BUILDERS[name](a, dict(o)) for name, o in self.options.items()}
            # The core's learner drives them: its hooks and the list every method tells its resets to.
            self._learner = Learner([], a.optimizer, list(built.values()))
        return {m.name: m for m in self._learner.methods}

    def _needs(self) -> set[str]:
        """The calls besides step() this configuration acts at ("loss_term", "epoch", "task_switch")."""
        needs = {"loss_term"} if any(hasattr(m, "penalty") and m.strength for m in self.methods.values()) else set()
        for name, o in self.options.items():
            needs |= METHODS[name].needs({**METHODS[name].defaults, **o})
        return needs

    def _warn_unused_hooks(self) -> None:
        calls = {"loss_term": "loss_term", "epoch": "end_epoch", "task_switch": "task_switch"}
        missing = [calls[n] for n in sorted(self._needs()) if not self._calls[calls[n]]]
        if missing:
            warnings.warn(f"{self._calls['step']} step() calls and no {' / '.join(f'{c}()' for c in missing)}: "
                          f"the configuration {self.extra_repr()} acts there, so it has done nothing there yet",
                          stacklevel=3)

    def step(self) -> None:
        """Run the methods' after-step hook; call it after every optimizer.step()."""
        methods = self.methods
        if "cbp" in methods or "redo" in methods:
            for g in self.groups:
                if g.activation is None:
                    raise RuntimeError(f"no activations of group {g.name!r} yet: step() needs a forward pass "
                                       "with autograd on (the batch of this optimizer step) before it")
        for m in methods.values():
            m.after_step(self._learner)
        self._calls["step"] += 1
        if self._calls["step"] == self.hook_warning_steps and not self._warned:
            self._warned = True
            self._warn_unused_hooks()

    def loss_term(self) -> torch.Tensor:
        """The methods' penalties (L2 Init, Parseval) as one tensor to add to the loss before backward()."""
        self._calls["loss_term"] += 1
        a = self._attachment[0]
        loss = torch.zeros((), device=a.params[0].device if a.params else None)
        for m in self.methods.values():
            loss = m.after_loss(self._learner, loss)
        return loss

    def end_epoch(self) -> None:
        """Call at the end of each epoch (a supervised epoch; an RL update's epochs over a rollout)."""
        self._calls["end_epoch"] += 1
        self.methods  # noqa: B018
        self._learner.end_epoch()

    def task_switch(self) -> None:
        """Call when the task changes (the stream's next task)."""
        self._calls["task_switch"] += 1
        self.methods  # noqa: B018
        self._learner.task_switch()

    def stats(self) -> dict[str, float]:
        """Counters, e.g. {'cbp/0/replacements': 3.0} (cumulative)."""
        self.methods  # noqa: B018
        return self._learner.stats()

    def get_extra_state(self) -> dict:
        return {"generator": self.generator.get_state(),
                "methods": {name: m.state_dict() for name, m in self.methods.items()}}

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        for name, m in self.methods.items():
            m.load_state_dict(state["methods"][name])

    def remove(self) -> None:
        """Detach from the model and the optimizer (forward and step hooks)."""
        for h in [*self._handles, *self._attachment[0].handles]:
            h.remove()
        self._handles = []
        self._attachment[0].handles.clear()

    def extra_repr(self) -> str:
        enabled = [k for k, v in self.options.items() if v is not None]
        return f"methods={enabled}, groups={[g.name for g in self.groups]}"


def attach_cbp(model: nn.Module, optimizer: torch.optim.Optimizer, *, groups=None, init="torch",
               seed: int | None = None, auto_step: bool = False, **cbp_options) -> Plasticity:
    """Continual backprop on `model`'s hidden units; call `.step()` after each optimizer.step().

    cbp_options go to the core's ContinualBackprop: replacement_rate (1e-4), maturity_threshold (100),
    decay_rate (0.99), utility ("contribution" | "adaptable_contribution" | "random"),
    transfer_mean_to_bias (True)."""
    return Plasticity(model, optimizer, cbp=cbp_options, groups=groups, init=init, seed=seed, auto_step=auto_step)


def attach_redo(model: nn.Module, optimizer: torch.optim.Optimizer, *, groups=None, init="torch",
                seed: int | None = None, auto_step: bool = False, **redo_options) -> Plasticity:
    """ReDo on `model`'s hidden units: threshold (0.1), every (100 optimizer steps)."""
    return Plasticity(model, optimizer, redo=redo_options, groups=groups, init=init, seed=seed, auto_step=auto_step)


def attach_shrink_perturb(model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                          seed: int | None = None, auto_step: bool = False, params=None,
                          **snp_options) -> Plasticity:
    """Shrink-and-perturb on all of `model`'s parameters (or `params`): shrink, noise_std."""
    return Plasticity(model, optimizer, snp=snp_options, seed=seed, auto_step=auto_step, params=params)
