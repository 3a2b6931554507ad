"""Stable-Baselines3 callbacks: the plasticity metrics in SB3's logger (TensorBoard), and the methods' hooks.

`PlasticityMetricsCallback(every=N)` measures the policy's actor and critic (integrations/sb3_nets.py) with
`rl_plasticity.Measure` (the learner core's metrics, core/metrics.py) and writes them to SB3's logger as
`plasticity/<net>/<layer>/<metric>` (DESIGN §5's tags; layers named as in `policy.named_modules()`), plus the
methods' counters of a plasticity policy as `plasticity/<net>/<layer>/<method>_<stat>`. They are measured as
the toolkit's PPO measures them (DESIGN §6), on the latest data:
- on-policy (PPO, A2C): at the end of each rollout that crosses a multiple of N env steps, on the last
  `probe_size` observations of the rollout buffer, through the nets that acted on them (before the update);
- off-policy (SAC): at the step that crosses a multiple of N, on the replay buffer's latest `probe_size`
  transitions (the critic on their observations and actions).
The gradient metrics read the gradient the latest optimizer step received (kept by a step hook, so SAC's
actor loss, which also backpropagates into the critic, does not blur the critic's). Distance from init is
from the weights the policy had when the callback first ran (a fresh model's initial weights).
The values are written at the measurement's step, beside (not into) what SB3 itself logs.

`PlasticityHooksCallback()` makes the calls a plasticity policy's methods may act at: `policy.end_epoch()`
after each update (on-policy; the toolkit's PPO does the same) and `policy.task_switch()` when the env's
`info["phase"]` changes (the toolkit's non-stationary envs report it; with several envs, whenever any env's
does), or when `task_switch(callback)` says so.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import HumanOutputFormat, KVWriter
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

from rl_plasticity.integrations.measure import Measure
from rl_plasticity.integrations.sb3_nets import as_tensor, measured_forward, policy_nets
from rl_plasticity.run.tblog import method_stat_tag



def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _latest(array: np.ndarray, end: int, filled: int, n: int) -> np.ndarray:
    """The last n of the `filled` entries of a ring buffer [size, n_envs, ...] whose next write is at `end`,
    flattened over envs."""
    idx = (end - 1 - np.arange(min(filled, n))[::-1]) % len(array)
    return array[idx].reshape(-1, *array.shape[2:])[-n:]


def _buffer_samples(model: BaseAlgorithm, n: int) -> tuple:
    """(observations,) of the latest rollout, or (observations, actions) of the latest transitions."""
    if isinstance(model, OnPolicyAlgorithm):
        buf = model.rollout_buffer  # [steps, envs, ...]; flattened to [steps x envs, ...] once trained on
        obs = buf.observations
        if isinstance(obs, dict):
            return ({k: v.reshape(-1, *buf.obs_shape[k])[-n:] for k, v in obs.items()},)
        return (obs.reshape(-1, *buf.obs_shape)[-n:],)
    buf = model.replay_buffer
    filled = buf.buffer_size if buf.full else buf.pos
    if isinstance(buf.observations, dict):
        raise TypeError("PlasticityMetricsCallback reads array observations from the replay buffer; a dict "
                        "replay buffer is not supported")
    obs, actions = (_latest(a, buf.pos, filled, n) for a in (buf.observations, buf.actions))
    vec_normalize = model.get_vec_normalize_env()
    if vec_normalize is not None:  # the replay buffer keeps the raw observations
        obs = vec_normalize.normalize_obs(obs)
    return obs, actions


class _LatestGrads:
    """The gradients the latest step of an optimizer received (clones, taken by a step pre-hook)."""

    def __init__(self, optimizer, params):
        self.params, self.grads = list(params), {}
        self.handle = optimizer.register_step_pre_hook(self._keep)

    def _keep(self, optimizer, args, kwargs) -> None:
        self.grads = {p: p.grad.detach().clone() for p in self.params if p.grad is not None}


class PlasticityMetricsCallback(BaseCallback):
    """Log the plasticity metrics of the actor's and critic's layers every `every` env steps (see the module
    docstring). probe_size: observations measured on (the toolkit's PPO: 1,000); dormant, tau, grama_tau:
    as `rl_plasticity.Measure`; method_stats: also log a plasticity policy's method counters."""

    def __init__(self, every: int = 10_000, probe_size: int = 1000, *, dormant: str = "spatial_mean",
                 tau: float = 0.0, grama_tau: float = 0.0, method_stats: bool = True, verbose: int = 0):
        super().__init__(verbose)
        self.every, self.probe_size = _positive_int("every", every), _positive_int("probe_size", probe_size)
        self.options = {"dormant": dormant, "tau": tau, "grama_tau": grama_tau}
        Measure(torch.nn.Sequential(), groups=[], **self.options)  # bad options fail here, not at the first step
        self.method_stats = method_stats
        self.measures: dict[str, Measure] = {}
        self._grads: dict[str, _LatestGrads] = {}
        self._measured_at = None  # env steps of the latest measurement

    def _init_callback(self) -> None:
        if self.measures:  # learn() called again: keep measuring from the same init
            return
        policy = self.model.policy
        optimizers = {"actor": policy.optimizer, "critic": policy.optimizer} if isinstance(
            self.model, OnPolicyAlgorithm) else {"actor": policy.actor.optimizer, "critic": policy.critic.optimizer}
        for net in policy_nets(policy):
            self.measures[net.name] = Measure(policy, groups=net.specs, layers=net.layer_names,
                                              forward=measured_forward(policy, net.name), **self.options)
            weights = [policy.get_submodule(n).weight for n in net.layer_names]
            self._grads[net.name] = _LatestGrads(optimizers[net.name], weights)
        self._measured_at = self.num_timesteps

    def _due(self) -> bool:
        return self.num_timesteps // self.every != self._measured_at // self.every

    def _on_step(self) -> bool:
        if not isinstance(self.model, OnPolicyAlgorithm) and self._due():
            self.record_metrics()
        return True

    def _on_rollout_end(self) -> None:
        if isinstance(self.model, OnPolicyAlgorithm) and self._due():
            self.record_metrics()

    def metrics(self) -> dict[str, float]:
        """Every metric now, by TensorBoard tag."""
        policy = self.model.policy
        samples = [as_tensor(policy, s) if i == 0 else torch.as_tensor(s, device=policy.device)
                   for i, s in enumerate(_buffer_samples(self.model, self.probe_size))]
        out = {}
        for name, m in self.measures.items():
            inputs = samples if name == "critic" and not isinstance(self.model, OnPolicyAlgorithm) else samples[:1]
            out.update({f"plasticity/{name}/{k}": v for k, v in m(*inputs, grads=self._grads[name].grads).items()})
        stats = getattr(policy, "plasticity_stats", None)
        if self.method_stats and stats is not None:
            out.update({method_stat_tag(k, net): v for net, values in stats().items() for k, v in values.items()})
        return out

    def record_metrics(self) -> None:
        """Measure now and write the values at this step, leaving what SB3 has recorded for its own next dump."""
        values = self.metrics()
        self._measured_at = self.num_timesteps
        for fmt in self.logger.output_formats:
            # Not the console: a table of every layer's metrics would bury SB3's own.
            if isinstance(fmt, KVWriter) and not isinstance(fmt, HumanOutputFormat):
                fmt.write(values, dict.fromkeys(values, ()), self.num_timesteps)  # TensorBoard flushes each write


class PlasticityHooksCallback(BaseCallback):
    """Call a plasticity policy's `end_epoch()` after each on-policy update and `task_switch()` when the env's
    `info["phase"]` changes; task_switch: a callable (callback -> bool) to decide instead (e.g. on a schedule)."""

    def __init__(self, task_switch: Callable[[BaseCallback], bool] | None = None, verbose: int = 0):
        super().__init__(verbose)
        self.task_switch = task_switch
        self._phases = None
        self._updates = None
        self.switches = 0

    def _init_callback(self) -> None:
        for name in ("end_epoch", "task_switch"):
            if not callable(getattr(self.model.policy, name, None)):
                raise TypeError(f"{type(self.model.policy).__name__} has no {name}(): use rl_plasticity's "
                                "PlasticityPolicy or PlasticitySACPolicy")
        self._updates = getattr(self.model, "_n_updates", 0)

    def _after_update(self) -> None:
        updates = getattr(self.model, "_n_updates", 0)
        if isinstance(self.model, OnPolicyAlgorithm) and updates != self._updates:
            self.model.policy.end_epoch()
        self._updates = updates

    def _on_rollout_start(self) -> None:
        self._after_update()

    def _on_training_end(self) -> None:  # learn() ends with an update
        self._after_update()

    def _on_step(self) -> bool:
        if self.task_switch is not None:
            switch = bool(self.task_switch(self))
        else:
            phases = [info.get("phase") for info in self.locals.get("infos", [])]
            switch = self._phases is not None and phases != self._phases and None not in phases
            self._phases = phases
        if switch:
            self.model.policy.task_switch()
            self.switches += 1
        return True
