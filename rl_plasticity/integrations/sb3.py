"""Stable-Baselines3 policies with plasticity methods in the actor AND the critic.

    model = PPO(CBPPolicy, env, policy_kwargs={"cbp": {"maturity_threshold": 10_000}})
    model = SAC(CBPSACPolicy, env)

Continual backprop (Dohare et al., Nature 2024; their PPO setting: replacement rate 1e-4, maturity
10,000, utility decay 0.99, "contribution" utility, after every minibatch step) runs through SB3's
own extension points: the policy class builds the networks as usual, then attaches
`rl_plasticity.Plasticity` to them. Its forward hooks keep the activations of the latest training
forward pass (SB3 acts under no_grad, so acting does not overwrite them), and the optimizer's step
hook runs the methods after every `optimizer.step()`, i.e. after every minibatch step. The
optimizer defaults to `rl_plasticity.Adam`, so a replaced unit's Adam state is reset exactly
(torch's Adam can only have its moments reset, with a warning). The methods' state is a submodule's
state of the policy, so `model.save()` / `PPO.load()` keep it.

Unit groups: PPO's `mlp_extractor.policy_net` layers read by each other and by `action_net`, and
`mlp_extractor.value_net` read by `value_net`; SAC's `actor.latent_pi` read by `actor.mu` and
`actor.log_std` together, and every Q-network `critic.qf<i>` (not the target networks: Polyak
averaging follows the critic). Layers inside a custom features extractor are not included.
A replaced unit's incoming weights are drawn from U(+-g*sqrt(3/fan_in)) with g = sqrt(2) (the
variance of SB3's orthogonal init of hidden layers) when `ortho_init` is on, else from torch's
default layer init; `plasticity_init` overrides it.
"""

from __future__ import annotations

import math
from typing import Any

from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.sac.policies import SACPolicy
from torch import nn

from rl_plasticity.integrations.finder import UnitSpec, _flatten_chain, chain_specs
from rl_plasticity.integrations.optim import Adam
from rl_plasticity.integrations.torch_api import Plasticity

# The paper's CBP settings for PPO (DESIGN §4); a dict given as `cbp` is applied on top of them.
PAPER_CBP = {"replacement_rate": 1e-4, "maturity_threshold": 10_000, "decay_rate": 0.99, "utility": "contribution"}


def _cbp_options(cbp) -> dict | None:
    if cbp is None or cbp is False:
        return None
    return {**PAPER_CBP, **({} if cbp is True else dict(cbp))}


def _chain(root: nn.Module, seq_name: str) -> list[tuple[str, nn.Module]]:
    seq = root.get_submodule(seq_name)
    return _flatten_chain(seq, seq_name + ".")


class _PlasticityOptions:
    """The keyword arguments both policies take, kept for SB3's save/load of the policy."""

    def _set_plasticity_options(self, cbp, redo, snp, plasticity_init, plasticity_seed) -> None:
        # Stored before nn.Module.__init__ runs (SB3 builds the networks inside __init__).
        object.__setattr__(self, "_plasticity_kwargs", {"cbp": cbp, "redo": redo, "snp": snp,
                                                        "plasticity_init": plasticity_init,
                                                        "plasticity_seed": plasticity_seed})

    def _require_units(self, specs: list[UnitSpec], where: str) -> None:
        """CBP and ReDo act on hidden units: refuse a network without hidden layers rather than do nothing."""
        o = self._plasticity_kwargs
        if not specs and (_cbp_options(o["cbp"]) is not None or o["redo"] not in (None, False)):
            raise ValueError(f"CBP and ReDo need at least one hidden layer, and the {where} has none (net_arch="
                             f"{self.net_arch!r}): give it hidden layers in policy_kwargs['net_arch'], or turn "
                             "cbp and redo off (cbp=None, redo=None)")

    def _attach(self, specs: list[UnitSpec], optimizer, default_init, seed_offset: int = 0) -> Plasticity:
        o = self._plasticity_kwargs
        init = default_init if o["plasticity_init"] is None else o["plasticity_init"]
        seed = None if o["plasticity_seed"] is None else o["plasticity_seed"] + seed_offset
        # Shrink-and-perturb acts on what this optimizer trains (not, e.g., SAC's target networks).
        params = [p for group in optimizer.param_groups for p in group["params"]]
        return Plasticity(self, optimizer, cbp=_cbp_options(o["cbp"]), redo=o["redo"], snp=o["snp"], groups=specs,
                          init=init, seed=seed, auto_step=True, params=params)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), **self._plasticity_kwargs}


class CBPPolicy(_PlasticityOptions, ActorCriticPolicy):
    """SB3's ActorCriticPolicy (for PPO, A2C) with CBP (default on, the paper's settings) and
    optionally ReDo (`redo={...}`) and shrink-and-perturb (`snp={...}`) in actor and critic.

    Extra policy_kwargs: cbp (True, None or a dict over PAPER_CBP), redo, snp (None or a dict of the
    core method's options), plasticity_init, plasticity_seed. `policy.plasticity` holds the methods
    (`.stats()` for replacement counts)."""

    def __init__(self, *args, cbp=True, redo=None, snp=None, plasticity_init=None, plasticity_seed=None, **kwargs):
        self._set_plasticity_options(cbp, redo, snp, plasticity_init, plasticity_seed)
        kwargs.setdefault("optimizer_class", Adam)
        super().__init__(*args, **kwargs)

    def _build(self, lr_schedule) -> None:
        super()._build(lr_schedule)
        policy_specs = chain_specs(_chain(self, "mlp_extractor.policy_net") + [("action_net", self.action_net)])
        value_specs = chain_specs(_chain(self, "mlp_extractor.value_net") + [("value_net", self.value_net)])
        self._require_units(policy_specs, "policy network (mlp_extractor.policy_net)")
        self._require_units(value_specs, "value network (mlp_extractor.value_net)")
        self.plasticity = self._attach(policy_specs + value_specs, self.optimizer,
                                       math.sqrt(2) if self.ortho_init else "torch")


class CBPSACPolicy(_PlasticityOptions, SACPolicy):
    """SB3's SACPolicy with CBP (default on) and optionally ReDo / shrink-and-perturb in the actor
    (stepped with the actor's optimizer) and the critic's Q-networks (with the critic's optimizer).
    Same extra policy_kwargs as CBPPolicy; `policy.actor_plasticity` and `policy.critic_plasticity`."""

    def __init__(self, *args, cbp=True, redo=None, snp=None, plasticity_init=None, plasticity_seed=None, **kwargs):
        self._set_plasticity_options(cbp, redo, snp, plasticity_init, plasticity_seed)
        kwargs.setdefault("optimizer_class", Adam)
        super().__init__(*args, **kwargs)

    def _build(self, lr_schedule) -> None:
        super()._build(lr_schedule)
        actor = self.actor
        if not isinstance(actor.mu, nn.Linear) or not isinstance(actor.log_std, nn.Linear):
            raise ValueError("CBPSACPolicy needs the default Gaussian actor (use_sde=False): its mu and log_std "
                             "heads are the layers that read the last hidden units")
        actor_specs = chain_specs(_chain(self, "actor.latent_pi") + [("actor.mu", actor.mu)])
        if actor_specs:  # the last hidden layer is read by both heads
            last = actor_specs[-1]
            actor_specs[-1] = UnitSpec(last.incoming, ("actor.mu", "actor.log_std"), last.norm)
        critic_specs = [spec for i in range(len(self.critic.q_networks))
                        for spec in chain_specs(_chain(self, f"critic.qf{i}"))]
        self._require_units(actor_specs, "actor (actor.latent_pi)")
        self._require_units(critic_specs, "critic (critic.qf*)")
        self.actor_plasticity = self._attach(actor_specs, actor.optimizer, "torch")
        # The critic's methods draw from their own stream.
        self.critic_plasticity = self._attach(critic_specs, self.critic.optimizer, "torch", seed_offset=1)
