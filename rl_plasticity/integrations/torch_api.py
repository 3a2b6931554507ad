"""Plasticity methods on an ordinary PyTorch model: attach, call `step()` after `optimizer.step()`.

    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 1))
    opt = rl_plasticity.Adam(model.parameters(), lr=1e-3, betas=(0.99, 0.99))
    cbp = rl_plasticity.attach_cbp(model, opt, replacement_rate=1e-4, maturity_threshold=100)
    ...  loss.backward(); opt.step(); cbp.step()

The methods are the learner core's own code (rl_plasticity/core/methods): continual backprop
(Dohare et al., Nature 2024: utility, bias correction by 1 - d^age, maturity, fractional replacement
accumulator, lowest-utility replacement with fresh incoming and zero outgoing weights), ReDo (Sokar
et al., 2023) and shrink-and-perturb (Ash & Adams, 2020). They act on the model's layers through
views with a replica axis of 1 (rl_plasticity/integrations/groups.py), and they reset a replaced
unit's optimizer state: exactly with `rl_plasticity.Adam`/`SGD`, as far as possible (with one
warning) with torch's optimizers.

`Plasticity` is an `nn.Module` with no parameters: its `state_dict()` holds the methods' state and
its random generator, so a checkpoint saves and restores it like the model's; registered as a
submodule (as the Stable-Baselines3 policies do), it travels inside the owner's state_dict.
"""

from __future__ import annotations

import difflib
from typing import Any

import torch
from torch import nn

from rl_plasticity.core.methods import METHODS, ContinualBackprop, ReDo, ShrinkPerturb
from rl_plasticity.integrations.finder import build_groups
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
    """Plasticity methods attached to `model`: CBP (`cbp=`), ReDo (`redo=`), shrink-and-perturb (`snp=`).

    Each of cbp/redo/snp is None (off), True (the core's defaults) or a dict of the core method's
    options (e.g. cbp={"replacement_rate": 1e-4, "maturity_threshold": 10_000, "utility": "contribution"}).
    groups: None to find the hidden units automatically, or declared (see `build_groups`).
    init: distribution of a replaced unit's incoming weights: "torch" (nn.Linear/Conv's own default,
    U(+-1/sqrt(fan_in))), "lecun", "kaiming", a gain g for U(+-g*sqrt(3/fan_in)), or a callable.
    seed: seeds the methods' generator (None: drawn from torch's global generator).
    auto_step: call `step()` after every `optimizer.step()` (through the optimizer's step hook).
    Attach after moving the model to its device; the methods' state is created beside the units.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, cbp=None, redo=None,
                 snp=None, groups=None, init="torch", seed: int | None = None, auto_step: bool = False,
                 params=None):
        super().__init__()
        self.options = {"cbp": _options(cbp, "cbp"), "redo": _options(redo, "redo"), "snp": _options(snp, "snp")}
        if all(v is None for v in self.options.values()):
            raise ValueError("no plasticity method enabled: pass cbp=, redo= and/or snp=")
        for name, options in self.options.items():
            if options is not None:
                check_options(name, options)
        needs_units = self.options["cbp"] is not None or self.options["redo"] is not None
        if needs_units and optimizer is None:
            raise ValueError("CBP and ReDo reset the optimizer state of the units they replace: pass the optimizer")
        # Plain lists, so that nn.Module does not register the user's model or layers as submodules.
        self._optimizer = [optimizer]
        self.groups = build_groups(model, groups, init) if needs_units else []
        if needs_units and not self.groups:
            raise ValueError("CBP and ReDo need at least one hidden layer: no unit groups were declared")
        self._snp_params = list(params if params is not None else model.parameters())
        seed = int(torch.randint(0, 2**62, ())) if seed is None else int(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self._methods: dict[str, Any] | None = None
        self._handles = [self._hook(g) for g in self.groups]
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
        """The core's method objects, built on first use where the model's weights then are."""
        if self._methods is None:
            o, gens, methods = self.options, [self.generator], {}
            if o["cbp"] is not None:
                methods["cbp"] = ContinualBackprop(self.groups, unit_resetter(self._optimizer[0]), gens, **o["cbp"])
            if o["redo"] is not None:
                methods["redo"] = ReDo(self.groups, unit_resetter(self._optimizer[0]), gens, **o["redo"])
            if o["snp"] is not None:
                # Detached views with a replica axis of 1: the core's in-place updates write into the model.
                views = [p.detach().unsqueeze(0) for p in self._snp_params]
                methods["snp"] = ShrinkPerturb(views, gens, **o["snp"])
            self._methods = methods
        return self._methods

    def step(self) -> None:
        """Run the methods' after-step hook; call it after every optimizer.step()."""
        methods = self.methods
        if "cbp" in methods or "redo" in methods:
            for g in self.groups:
                if g.activation is None:
                    raise RuntimeError(f"no activations of group {g.name!r} yet: step() needs a forward pass "
                                       "with autograd on (the batch of this optimizer step) before it")
        for m in methods.values():
            m.after_step(None)

    def end_epoch(self) -> None:
        for m in self.methods.values():
            m.after_epoch(None)

    def task_switch(self) -> None:
        for m in self.methods.values():
            m.on_task_switch(None)

    def stats(self) -> dict[str, float]:
        """Counters, e.g. {'cbp/0/replacements': 3.0} (cumulative)."""
        return {f"{name}/{k}": v for name, m in self.methods.items() for k, v in m.stats().items()}

    def get_extra_state(self) -> dict:
        return {"generator": self.generator.get_state(),
                "methods": {name: m.state_dict() for name, m in self.methods.items()}}

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        for name, m in self.methods.items():
            m.load_state_dict(state["methods"][name])

    def remove(self) -> None:
        """Detach from the model and the optimizer (forward and step hooks)."""
        for h in self._handles:
            h.remove()
        self._handles = []

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
