"""Stable-Baselines3 policies with the learner core's plasticity methods in the actor AND the critic.

    model = PPO(PlasticityPolicy, env, policy_kwargs={"cbp": {"maturity_threshold": 10_000}, "l2_init": True})
    model = SAC(PlasticitySACPolicy, env, policy_kwargs={"redo": True, "parseval": {"strength": 1e-3}})

Every method of the core's registry (rl_plasticity.core.methods.METHODS) is a policy keyword, by its config
section's name, with True (its defaults) or a dict of its options, exactly as `rl_plasticity.Plasticity`
takes it: the policy passes them on unread, so a method added to the registry is a keyword here too.
`cbp` options are applied on top of the paper's PPO setting (Dohare et al., Nature 2024: replacement rate
1e-4, maturity 10,000, utility decay 0.99, "contribution" utility). `CBPPolicy` / `CBPSACPolicy` are the
same policies with `cbp=True` by default.

The policy builds SB3's networks as usual, then attaches one `Plasticity` to the actor and one to the
critic (integrations/sb3_nets.py says which layers each holds), so that the methods acting on a net's
layers see its own output layer (the reset of the head, Parseval's exemption). Their forward hooks keep the
activations of the latest training pass (SB3 acts under no_grad), and the optimizer's step hook runs them
after every `optimizer.step()`, i.e. after every minibatch or gradient step. PPO's one optimizer serves
both; SAC's actor and critic optimizers each serve their net. The optimizer defaults to
`rl_plasticity.Adam`, so a re-initialised unit's Adam state is reset exactly.

Loss terms (L2 Init, Kumar et al. 2023; Parseval regularisation, Chung et al. 2024) enter SB3's loss
without touching SB3's train(): every SB3 algorithm updates as `optimizer.zero_grad(); loss.backward();
[clip_grad_norm_]; optimizer.step()`, and the policy's optimizer starts the gradients from the penalty's
gradient at `zero_grad()` instead of from zero. `loss.backward()` then accumulates SB3's loss on top, so
the optimizer gets the gradient of SB3's loss plus the penalty, clipped as SB3 clips it. (SB3's logged
`train/loss` does not include the penalty.) Methods acting at a task switch or an epoch's end get
`policy.task_switch()` and `policy.end_epoch()`; `PlasticityHooksCallback` (integrations/sb3_callbacks.py)
calls them from SB3's learn().

The methods' state is a submodule's state of the policy, so `model.save()` / `PPO.load()` keep it.
A re-initialised unit's or layer's incoming weights are drawn from U(+-g*sqrt(3/fan_in)) with g = sqrt(2)
(the variance of SB3's orthogonal init of hidden layers) when `ortho_init` is on, else from torch's default
layer init; `plasticity_init` overrides it. `plasticity_seed` seeds the actor's methods (the critic's: +1).
"""

from __future__ import annotations

import difflib
import inspect
import math
from typing import Any

from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.sac.policies import SACPolicy

from rl_plasticity.core.methods import METHODS, PlasticityMethod
from rl_plasticity.integrations.methods import NEEDS_UNITS
from rl_plasticity.integrations.optim import Adam
from rl_plasticity.integrations.sb3_nets import Net, policy_nets
from rl_plasticity.integrations.torch_api import Plasticity

# The paper's CBP settings for PPO (DESIGN §4); a dict given as `cbp` is applied on top of them.
# The methods' state in a PPO policy saved when one Plasticity served actor and critic together.
OLD_STATE_KEY = "plasticity._extra_state"
PAPER_CBP = {"replacement_rate": 1e-4, "maturity_threshold": 10_000, "decay_rate": 0.99, "utility": "contribution"}


def _enabled(value) -> bool:
    return value is not None and value is not False


def _method_options(methods: dict) -> dict:
    """The keywords for Plasticity: the enabled methods, CBP's over the paper's settings."""
    out = {name: value for name, value in methods.items() if _enabled(value)}
    if out.get("cbp") is True or isinstance(out.get("cbp"), dict):  # anything else: Plasticity says what is valid
        out["cbp"] = {**PAPER_CBP, **({} if out["cbp"] is True else dict(out["cbp"]))}
    return out


def _has_loss_term(name: str) -> bool:
    cls = METHODS.get(name)
    return cls is not None and cls.after_loss is not PlasticityMethod.after_loss


def add_penalties_at_zero_grad(optimizer, attachments: list[Plasticity]) -> None:
    """Make `optimizer.zero_grad()` leave the gradient of the attachments' loss terms in `.grad`, so that the
    next `loss.backward()` gives the gradient of loss + penalties (see the module docstring)."""
    zero_grad = optimizer.zero_grad

    def zero_grad_with_penalties(set_to_none: bool = True) -> None:
        zero_grad(set_to_none)
        penalty = sum(p.loss_term() for p in attachments)
        if penalty.requires_grad:
            penalty.backward()

    optimizer.zero_grad = zero_grad_with_penalties


class _PlasticityPolicy:
    """What both policies share: the method keywords, the attachments to actor and critic, the hooks."""

    _cbp_default = None
    _sb3_base: type  # the SB3 policy class it extends

    def _split_kwargs(self, kwargs: dict, plasticity_init, plasticity_seed) -> dict:
        """Take the method keywords out of SB3's kwargs; kept for SB3's save/load of the policy."""
        sb3 = [n for n in inspect.signature(self._sb3_base.__init__).parameters if n not in ("self", "args", "kwargs")]
        for key in kwargs:
            if key not in METHODS and key not in sb3:
                match = difflib.get_close_matches(key, [*METHODS, *sb3], n=1, cutoff=0.6)
                hint = f" (did you mean {match[0]!r}?)" if match else ""
                raise TypeError(f"unexpected keyword argument {key!r}{hint}: {type(self).__name__} takes the plasticity "
                                f"methods {', '.join(METHODS)}, plasticity_init, plasticity_seed and "
                                f"{self._sb3_base.__name__}'s own keywords ({', '.join(sb3)})")
        methods = {name: kwargs.pop(name) for name in list(kwargs) if name in METHODS}
        if self._cbp_default is not None:
            methods.setdefault("cbp", self._cbp_default)
        # Stored before nn.Module.__init__ runs (SB3 builds the networks inside __init__).
        object.__setattr__(self, "_plasticity_kwargs", {**methods, "plasticity_init": plasticity_init,
                                                        "plasticity_seed": plasticity_seed})
        object.__setattr__(self, "_methods", _method_options(methods))
        kwargs.setdefault("optimizer_class", Adam)
        return kwargs

    def _attach_all(self, optimizers: dict, default_init) -> None:
        """One Plasticity per net (None where no method is enabled), built now, at the initial weights."""
        o = self._plasticity_kwargs
        init = default_init if o["plasticity_init"] is None else o["plasticity_init"]
        nets = policy_nets(self)
        for net in nets:
            on_units = [name for name in self._methods if name in NEEDS_UNITS]
            if on_units and not net.specs:
                raise ValueError(f"{', '.join(on_units)} act(s) on hidden units, and the {net.where} has no hidden "
                                 f"layer (net_arch={self.net_arch!r}): give it hidden layers in "
                                 f"policy_kwargs['net_arch'], or turn {', '.join(on_units)} off")
        self.plasticity_nets = {}
        for i, net in enumerate(nets):
            attached = self._attach(net, optimizers[net.name], init, i) if self._methods else None
            setattr(self, f"{net.name}_plasticity", attached)
            self.plasticity_nets[net.name] = attached
        penalised = {}
        for net in nets:
            if any(_has_loss_term(name) for name in self._methods):
                penalised.setdefault(id(optimizers[net.name]), (optimizers[net.name], []))[1].append(
                    self.plasticity_nets[net.name])
        for optimizer, attachments in penalised.values():
            add_penalties_at_zero_grad(optimizer, attachments)

    def _attach(self, net: Net, optimizer, init, seed_offset: int) -> Plasticity:
        seed = self._plasticity_kwargs["plasticity_seed"]
        trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
        try:
            plasticity = Plasticity(net.as_module(), optimizer, groups=net.local_specs(), init=init,
                                    seed=None if seed is None else seed + seed_offset, auto_step=True,
                                    params=[p for p in net.params() if id(p) in trained], **self._methods)
        except ValueError as e:  # the model it names is this net, a PolicyNet of the policy's layers
            raise ValueError(f"{e} (the {net.where}: layers {', '.join(net.layer_names)}; "
                             f"net_arch={self.net_arch!r})") from e
        plasticity.methods  # noqa: B018 (built now: L2 Init's and the tortoise's weights are the initial ones)
        return plasticity

    def task_switch(self) -> None:
        """Tell the actor's and critic's methods that the task changed (e.g. the env's physics)."""
        for plasticity in self.plasticity_nets.values():
            if plasticity is not None:
                plasticity.task_switch()

    def end_epoch(self) -> None:
        """Tell the methods that an update's epochs are over (PPO: after each rollout's update)."""
        for plasticity in self.plasticity_nets.values():
            if plasticity is not None:
                plasticity.end_epoch()

    def plasticity_stats(self) -> dict[str, dict[str, float]]:
        """The methods' counters per net: {"actor": {"cbp/mlp_extractor.policy_net.0/replacements": 3.0}, ...}."""
        return {net: ({} if p is None else p.stats()) for net, p in self.plasticity_nets.items()}

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), **self._plasticity_kwargs}

    def load_state_dict(self, state_dict, strict: bool = True, **kwargs):
        if strict and OLD_STATE_KEY in state_dict:
            raise ValueError(
                f"this {type(self).__name__} was saved before the methods were attached to actor and critic "
                f"separately: its state holds one '{OLD_STATE_KEY}' for both nets, and the policy now keeps "
                "'actor_plasticity' and 'critic_plasticity', so the methods' state cannot be carried over. To keep "
                "its network weights and optimizer state, with the methods starting afresh: build the model, then "
                "model.set_parameters(path, exact_match=False)")
        return super().load_state_dict(state_dict, strict, **kwargs)


class PlasticityPolicy(_PlasticityPolicy, ActorCriticPolicy):
    """SB3's ActorCriticPolicy (PPO, A2C) with plasticity methods in actor and critic, one optimizer for both.

    Extra policy_kwargs: every method of the core's registry by section name (cbp, redo, snp, reset, l2_init,
    parseval, swr, weight_clipping, hare_tortoise, ...), plasticity_init, plasticity_seed.
    `policy.actor_plasticity` / `policy.critic_plasticity` hold the methods."""

    _sb3_base = ActorCriticPolicy

    def __init__(self, *args, plasticity_init=None, plasticity_seed=None, **kwargs):
        super().__init__(*args, **self._split_kwargs(kwargs, plasticity_init, plasticity_seed))

    def _build(self, lr_schedule) -> None:
        super()._build(lr_schedule)
        self._attach_all({"actor": self.optimizer, "critic": self.optimizer},
                         math.sqrt(2) if self.ortho_init else "torch")


class PlasticitySACPolicy(_PlasticityPolicy, SACPolicy):
    """SB3's SACPolicy with plasticity methods in the actor (stepped with the actor's optimizer) and the
    critic's Q-networks (with the critic's optimizer). Same extra policy_kwargs as PlasticityPolicy."""

    _sb3_base = SACPolicy

    def __init__(self, *args, plasticity_init=None, plasticity_seed=None, **kwargs):
        super().__init__(*args, **self._split_kwargs(kwargs, plasticity_init, plasticity_seed))

    def _build(self, lr_schedule) -> None:
        super()._build(lr_schedule)
        self._attach_all({"actor": self.actor.optimizer, "critic": self.critic.optimizer}, "torch")


class CBPPolicy(PlasticityPolicy):
    """PlasticityPolicy with continual backprop on by default (the paper's settings)."""

    _cbp_default = True


class CBPSACPolicy(PlasticitySACPolicy):
    """PlasticitySACPolicy with continual backprop on by default (the paper's settings)."""

    _cbp_default = True
