"""The actor and the critic of a Stable-Baselines3 policy, as the plasticity methods and metrics see them.

Each net is a chain of the policy's own modules, named as in `policy.named_modules()`:
- ActorCriticPolicy (PPO, A2C): actor `mlp_extractor.policy_net` then `action_net`; critic
  `mlp_extractor.value_net` then `value_net`;
- SACPolicy: actor `actor.latent_pi` then `actor.mu` (its last hidden units are read by `actor.mu` and
  `actor.log_std` together); critic every Q-network `critic.qf<i>` (not the target networks, which Polyak
  averaging makes follow the critic).
A hidden-unit group is a weight layer of the chain whose units an activation feeds to the next weight
layer (integrations/finder.py's `chain_specs`). Layers inside a features extractor are not part of a net.

`Net.as_module()` holds the chain's modules in order, unregistered in the policy (so the policy's state_dict
has each parameter once); the methods see it as a network whose last layer is the output layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.sac.policies import SACPolicy
from torch import nn

from rl_plasticity.integrations.finder import UnitSpec, _flatten_chain, chain_specs


class PolicyNet(nn.ModuleList):
    """A policy's actor or critic as one module (`Net.as_module`); an error about the model names it so."""


@dataclass
class Net:
    """One net of a policy: its name ("actor" or "critic"), its modules, its unit groups and weight layers
    (names relative to the policy), and the parameters its optimizer trains besides the chain's own."""

    name: str
    chain: list[tuple[str, nn.Module]]
    specs: list[UnitSpec]
    extra_params: list[nn.Parameter]
    where: str  # how an error message names the part of the policy

    @property
    def layer_names(self) -> list[str]:
        return [n for n, m in self.chain if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]

    def as_module(self) -> PolicyNet:
        """The chain as one (new) module, its children numbered in chain order."""
        return PolicyNet(m for _, m in self.chain)

    def local_specs(self) -> list[UnitSpec]:
        """The unit groups with the names of `module` (indices), each keeping its policy name as its name."""
        index = {n: str(i) for i, (n, _) in enumerate(self.chain)}
        return [UnitSpec(index[s.incoming], tuple(index[o] for o in s.outgoing_names),
                         None if s.norm is None else index[s.norm], name=s.incoming) for s in self.specs]

    def params(self) -> list[nn.Parameter]:
        own = [p for _, m in self.chain for p in m.parameters(recurse=False)]
        return own + [p for p in self.extra_params if all(p is not q for q in own)]


def _chain(policy: nn.Module, seq_name: str) -> list[tuple[str, nn.Module]]:
    return _flatten_chain(policy.get_submodule(seq_name), seq_name + ".")


def _params(*modules: nn.Module) -> list[nn.Parameter]:
    return [p for m in modules for p in m.parameters()]


def actor_critic_nets(policy: ActorCriticPolicy) -> list[Net]:
    """PPO's / A2C's actor and critic. The actor also trains the state-independent log std (if any) and the
    features extractor (a shared one counts as the actor's); the critic a features extractor of its own."""
    actor = _chain(policy, "mlp_extractor.policy_net") + [("action_net", policy.action_net)]
    critic = _chain(policy, "mlp_extractor.value_net") + [("value_net", policy.value_net)]
    log_std = [policy.log_std] if isinstance(getattr(policy, "log_std", None), nn.Parameter) else []
    shared = policy.share_features_extractor
    actor_fe = _params(policy.features_extractor if shared else policy.pi_features_extractor)
    critic_fe = [] if shared else _params(policy.vf_features_extractor)
    return [Net("actor", actor, chain_specs(actor), log_std + actor_fe, "policy network (mlp_extractor.policy_net)"),
            Net("critic", critic, chain_specs(critic), critic_fe, "value network (mlp_extractor.value_net)")]


def sac_nets(policy: SACPolicy) -> list[Net]:
    """SAC's actor (with its log-std head and features extractor) and its Q-networks."""
    actor = policy.actor
    if not isinstance(actor.mu, nn.Linear) or not isinstance(actor.log_std, nn.Linear):
        raise ValueError("the SAC plasticity policy needs the default Gaussian actor (use_sde=False): its mu and "
                         "log_std heads are the layers that read the last hidden units")
    # The log-std head first, so that `actor.mu` is the chain's output layer (the one the reset of the head and
    # Parseval's exemption mean); the log-std head is then a layer of the chain's like the hidden ones.
    chain = [("actor.log_std", actor.log_std)] + _chain(policy, "actor.latent_pi") + [("actor.mu", actor.mu)]
    specs = chain_specs(chain[1:])
    if specs:  # the last hidden layer is read by both heads
        last = specs[-1]
        specs[-1] = UnitSpec(last.incoming, ("actor.mu", "actor.log_std"), last.norm)
    critic = [x for i in range(len(policy.critic.q_networks)) for x in _chain(policy, f"critic.qf{i}")]
    critic_specs = [s for i in range(len(policy.critic.q_networks)) for s in chain_specs(_chain(policy, f"critic.qf{i}"))]
    return [Net("actor", chain, specs, _params(actor.features_extractor), "actor (actor.latent_pi)"),
            Net("critic", critic, critic_specs, _params(policy.critic.features_extractor), "critic (critic.qf*)")]


def policy_nets(policy: nn.Module) -> list[Net]:
    if isinstance(policy, ActorCriticPolicy):
        return actor_critic_nets(policy)
    if isinstance(policy, SACPolicy):
        return sac_nets(policy)
    raise TypeError(f"{type(policy).__name__} is neither an ActorCriticPolicy (PPO, A2C) nor a SACPolicy: its actor "
                    "and critic are not known")


def measured_forward(policy: nn.Module, net: str):
    """What runs a batch through a net for the metrics, without sampling (which would draw from torch's global
    generator): the actor's distribution parameters, the critic's values (SAC's Q-values need the actions)."""
    if isinstance(policy, ActorCriticPolicy):
        return policy.get_distribution if net == "actor" else policy.predict_values
    if net == "actor":
        return policy.actor.get_action_dist_params
    return lambda obs, actions: policy.critic(obs, actions)


def as_tensor(policy: nn.Module, obs) -> torch.Tensor:
    """Observations from a buffer as the policy takes them (on its device)."""
    return policy.obs_to_tensor(obs)[0]
