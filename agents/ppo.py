"""PPO with a Gaussian policy, separate actor and critic MLPs, trained through the learner core.

One Learner holds the actor, the critic and the state-independent log-std, with one Adam over all
of them; the actor's and the critic's hidden-unit groups are both handed to the plasticity methods,
so CBP / ReDo / shrink-and-perturb act on both nets after every minibatch step.

Loss details: advantages are normalised over the whole rollout, (A - mean) / std with the unbiased
std and no epsilon (left unscaled if the std is 0), as the paper's official code does;
"minibatch" normalises each minibatch instead, (A - mean) / (std + 1e-8), as SB3 and CleanRL do.
The value loss is vf_coef x the mean squared error against the GAE returns (no 1/2); the policy's
entropy enters the loss only with ent_coef > 0 (the paper uses none).

Acting needs no autograd: the actor's weights are read through numpy views that share memory with
the torch parameters (optimizer steps and unit resets write in place), so a batch-1 forward pass is
three small matmuls with no torch dispatch. The numpy path covers ReLU and CReLU actors, with or without
LayerNorm (`net.norm: layer`), the one linear map that plasticity injection into the output layer freezes, and
the frozen heads of an injection into more layers: numpy views of their stacks (core/frozen_heads.py, replica
0), all the heads of one start computed together, a few matmuls per layer whatever their number; the views are
rebound whenever the heads change (`frozen_heads_version`). An actor with another activation acts through its
torch forward instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from rl_plasticity.agents.rollout import RolloutBuffer, compute_gae, next_state_values
from rl_plasticity.core.builders import build_learner
from rl_plasticity.core.networks import MLP

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


ADVANTAGE_NORMALIZATIONS = ("batch", "minibatch", "none")
NUMPY_ACTIVATIONS = ("relu", "crelu")  # actors with these act in numpy (`policy_mean`)


def normalize_batch_advantages(adv: torch.Tensor) -> torch.Tensor:
    """(A - mean) / std over the whole rollout, unbiased std, no epsilon; a zero std leaves A - mean."""
    centred = adv - adv.mean()
    std = centred.std()
    return centred / std if bool(std > 0) else centred


class NonFiniteLoss(RuntimeError):
    """The PPO loss became NaN or inf (diverged training)."""


@dataclass
class PPOSettings:
    epochs: int = 10
    minibatch_size: int = 128
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip: float = 0.2
    vf_coef: float = 1.0
    ent_coef: float = 0.0
    advantage_normalization: str = "batch"  # one of ADVANTAGE_NORMALIZATIONS
    truncation_as_termination: bool = False


class PPOAgent:
    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], activation: str, init: str,
                 log_std_init: float, settings: PPOSettings, learner_cfg: dict,
                 init_generator: torch.Generator, method_generators: list[torch.Generator],
                 minibatch_generator: torch.Generator, norm: str = "none", zero_inputs_from: int | None = None):
        self.s = settings
        self.actor = MLP([obs_dim, *hidden, act_dim], activation=activation, init=init, norm=norm)
        self.critic = MLP([obs_dim, *hidden, 1], activation=activation, init=init, norm=norm)
        for net in (self.actor, self.critic):  # observation entries from here on are padding zeros
            net.layers[0].zero_inputs_from = zero_inputs_from
        self.actor.reset_parameters([init_generator])
        self.critic.reset_parameters([init_generator])
        # Replica axis first, like every core parameter, so methods treat it alike.
        self.log_std = torch.nn.Parameter(torch.full((1, act_dim), float(log_std_init)))
        for net_name, net in (("actor", self.actor), ("critic", self.critic)):
            for group in net.groups:
                group.name = f"{net_name}/{group.name}"
        params = [*self.actor.parameters(), *self.critic.parameters(), self.log_std]
        self.learner = build_learner(params, self.actor.groups + self.critic.groups, learner_cfg, method_generators,
                                     nets=[self.actor, self.critic])
        self.method_generators = method_generators
        self.minibatch_generator = minibatch_generator
        self._bind_numpy_policy()

    # -- acting ---------------------------------------------------------------------------------------

    def _bind_numpy_policy(self) -> None:
        def numpy_of(param: torch.nn.Parameter) -> np.ndarray:  # replica 0, sharing memory with the parameter
            return param.detach()[0].numpy()

        actor = self.actor
        self._np_layers = [(numpy_of(layer.weight), numpy_of(layer.bias)) for layer in actor.layers]
        self._np_norms = [(numpy_of(norm.weight), numpy_of(norm.bias), norm.eps) for norm in actor.norms]
        self._np_crelu = actor.activation_name == "crelu"
        self._numpy_acting = actor.activation_name in NUMPY_ACTIVATIONS
        # The frozen heads of injection into k >= 2 layers, per start: (start, signs [H], layers), each layer
        # (weight [H, out, in], bias [H, out], norm gain, bias [H, U] and eps or None), views of the stacks'
        # replica 0, so in-place edits (core/units.py) reach them.
        self._np_heads = []
        for stack in actor.head_stacks:
            layers = []
            for i, (w, b, *norm) in actor.by_layer(stack.start, [t.detach()[:, 0].numpy() for t in stack.tensors]):
                layers.append((w, b, (*norm, actor.norms[i].eps) if norm else None))
            self._np_heads.append((stack.start, stack.signs.numpy(), layers))
        self._np_heads_version = actor.frozen_heads_version

    def policy_mean(self, obs: np.ndarray) -> np.ndarray:
        """Batch-1 actor forward pass: in numpy for ReLU and CReLU actors, through torch for the others."""
        if not self._numpy_acting:
            return self._torch_policy_mean(obs)
        if self._np_heads_version != self.actor.frozen_heads_version:  # an injection made new stacks
            self._bind_numpy_policy()
        x, inputs = obs, {}
        for i, (w, b) in enumerate(self._np_layers[:-1]):
            inputs[i] = x
            x = w @ x + b
            if self._np_norms:
                gain, bias, eps = self._np_norms[i]
                x -= x.mean()
                x *= gain / np.sqrt(np.dot(x, x) / x.size + eps)
                x += bias
            if self._np_crelu:
                x = np.concatenate((np.maximum(x, 0.0), np.maximum(-x, 0.0)))
            else:
                np.maximum(x, 0.0, out=x)
        inputs[len(self._np_layers) - 1] = x
        w, b = self._np_layers[-1]
        out = w @ x + b
        frozen = self.actor.layers[-1].frozen  # plasticity injection's frozen map (core/methods/reset.py)
        if frozen is not None:
            out = out + frozen[0][0].numpy() @ x + frozen[1][0].numpy()
        for start, signs, layers in self._np_heads:
            out = out + self._numpy_heads(inputs[start], signs, layers)
        return out

    def _numpy_heads(self, x: np.ndarray, signs: np.ndarray, layers: list) -> np.ndarray:
        """The sum, signed, of the H frozen heads of one start on their shared input x [in]: [out]."""
        last = len(layers) - 1
        for j, (w, b, norm) in enumerate(layers):
            if j == 0:
                # Every head reads x. Not one [H*out, in] @ x: past ~2k rows OpenBLAS goes multi-threaded, which
                # stalls for milliseconds on a busy machine; a stacked matmul makes one small product per head.
                h = np.matmul(w, x) + b  # [H, out]
            else:
                h = np.matmul(w, h[:, :, None])[:, :, 0] + b  # [H, out, in] @ [H, in]
            if j == last:
                break  # the output layer: no norm, no activation
            if norm is not None:
                gain, bias, eps = norm
                h -= h.mean(1, keepdims=True)
                h *= gain / np.sqrt(np.square(h).mean(1, keepdims=True) + eps)
                h += bias
            if self._np_crelu:
                h = np.concatenate((np.maximum(h, 0.0), np.maximum(-h, 0.0)), 1)
            else:
                np.maximum(h, 0.0, out=h)
        return signs @ h

    @torch.no_grad()
    def _torch_policy_mean(self, obs: np.ndarray) -> np.ndarray:
        # The forward also refreshes the actor's activation taps; methods read them only after an update's
        # own forward pass, and metrics run their own probe, so acting changes nothing they see.
        return self.actor(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0))[0].numpy()

    def action_std(self) -> np.ndarray:
        return self.log_std.detach()[0].exp().numpy().copy()

    # -- learning -------------------------------------------------------------------------------------

    def _log_prob(self, mean: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        log_std = self.log_std.squeeze(0)  # not [0]: squeeze's backward is a view, indexing's a filled copy
        z = (actions - mean) / log_std.exp()
        return (-0.5 * z.square() - log_std - _LOG_SQRT_2PI).sum(-1)

    def entropy(self) -> torch.Tensor:
        return (0.5 + _LOG_SQRT_2PI + self.log_std.squeeze(0)).sum()

    @torch.no_grad()
    def prepare(self, buf: RolloutBuffer) -> dict[str, torch.Tensor]:
        """Old log-probs, values, advantages and returns of a filled buffer, all computed in batch."""
        obs, actions = torch.from_numpy(buf.obs), torch.from_numpy(buf.actions)
        old_log_prob = self._log_prob(self.actor(obs), actions)
        truncated_steps = sorted(buf.truncated_obs)
        extra = [buf.last_obs] + [buf.truncated_obs[t] for t in truncated_steps]
        all_values = self.critic(torch.cat([obs, torch.from_numpy(np.stack(extra))])).squeeze(-1).double().numpy()
        values, last_value, truncated_values = all_values[:buf.steps], all_values[buf.steps], all_values[buf.steps + 1:]
        terminated = buf.terminated | buf.ended if self.s.truncation_as_termination else buf.terminated
        boot = {} if self.s.truncation_as_termination else dict(zip(truncated_steps, truncated_values.tolist()))
        next_values = next_state_values(values, float(last_value), buf.ended, boot)
        advantages, returns = compute_gae(buf.rewards, values, next_values, terminated, buf.ended,
                                          self.s.gamma, self.s.gae_lambda)
        return {"obs": obs, "actions": actions, "old_log_prob": old_log_prob,
                "advantages": torch.from_numpy(advantages).float(), "returns": torch.from_numpy(returns).float(),
                "values": torch.from_numpy(values).float()}

    def update(self, buf: RolloutBuffer) -> dict[str, float]:
        """10 epochs x (T / minibatch_size) minibatch steps on one rollout; returns loss statistics."""
        s = self.s
        data = self.prepare(buf)
        obs, actions, old_lp, adv_all, ret_all = (data[k] for k in ("obs", "actions", "old_log_prob",
                                                                    "advantages", "returns"))
        if s.advantage_normalization == "batch":
            adv_all = normalize_batch_advantages(adv_all)
        n = obs.shape[0]
        stats = torch.zeros(s.epochs * (n // s.minibatch_size), 4)  # policy loss, value loss, kl, clipped
        row = 0
        for _ in range(s.epochs):
            order = torch.randperm(n, generator=self.minibatch_generator)
            for start in range(0, n - s.minibatch_size + 1, s.minibatch_size):
                idx = order[start:start + s.minibatch_size]
                adv = adv_all[idx]
                if s.advantage_normalization == "minibatch":
                    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                x = obs[idx]
                log_ratio = self._log_prob(self.actor(x), actions[idx]) - old_lp[idx]
                ratio = log_ratio.exp()
                policy_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - s.clip, 1 + s.clip)).mean()
                value_loss = (self.critic(x).squeeze(-1) - ret_all[idx]).square().mean()
                loss = policy_loss + s.vf_coef * value_loss
                if s.ent_coef:
                    loss = loss - s.ent_coef * self.entropy()
                if not math.isfinite(loss.item()):
                    raise NonFiniteLoss(f"PPO loss is {loss.item()} (policy {policy_loss.item()}, "
                                        f"value {value_loss.item()})")
                self.learner.update(loss)
                with torch.no_grad():
                    stats[row, 0], stats[row, 1] = policy_loss, value_loss
                    stats[row, 2] = ((ratio - 1) - log_ratio).mean()  # low-variance KL estimate
                    stats[row, 3] = ((ratio - 1).abs() > s.clip).float().mean()
                row += 1
        self.learner.end_epoch()
        policy_loss, value_loss, kl, clip_fraction = stats[:row].mean(0).tolist()
        values, returns = data["values"], data["returns"]
        var = returns.var().item()
        explained = float("nan") if var == 0 else 1 - (returns - values).var().item() / var
        return {"policy_loss": policy_loss, "value_loss": value_loss, "approx_kl": kl,
                "clip_fraction": clip_fraction, "entropy": self.entropy().item(), "explained_variance": explained}

    # -- checkpoints ----------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"learner": self.learner.state_dict(),
                "method_generators": [g.get_state() for g in self.method_generators],
                "minibatch_generator": self.minibatch_generator.get_state()}

    def load_state_dict(self, sd: dict) -> None:
        self.learner.load_state_dict(sd["learner"])
        for g, state in zip(self.method_generators, sd["method_generators"]):
            g.set_state(state)
        self.minibatch_generator.set_state(sd["minibatch_generator"])
        self._bind_numpy_policy()
