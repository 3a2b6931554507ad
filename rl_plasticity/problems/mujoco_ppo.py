"""PPO on (non-stationary) MuJoCo tasks: config, training loop, logging, checkpoints and resume.

One seed per process: on 2 cores a second seed is best run as a second process. The agent is not
told when the physics changes (as in the paper), so methods' task-switch hooks are not called.
Checkpoints are
taken between rollouts and hold everything needed to continue exactly (learner, RNGs, the env's
simulator state and schedule, normalisers, counters), so a stopped and resumed run gives the same
numbers as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import deque
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from rl_plasticity.agents.env_runner import EnvRunner
from rl_plasticity.agents.ppo import ADVANTAGE_NORMALIZATIONS, NonFiniteLoss, PPOAgent, PPOSettings
from rl_plasticity.agents.rollout import RolloutBuffer
from rl_plasticity.config import LayerSizes, OneOf, Range
from rl_plasticity.core.builders import METHOD_DEFAULTS, METHOD_RULES, check_method_hooks
from rl_plasticity.core.layers import INITS
from rl_plasticity.core.metrics import LOG_DEFAULTS, LOG_RULES, DistanceFromInit, gradient_metrics, probe_metrics
from rl_plasticity.core.networks import ACTIVATIONS, NORMS, mlp_config_problem
from rl_plasticity.core.step_size import (
    STEP_SIZE_LOG_DEFAULTS,
    STEP_SIZE_LOG_RULES,
    collapse_threshold,
    step_size_metrics,
)
from rl_plasticity.errors import UserError
from rl_plasticity.problems.headline import Headline

# envs comes through mujoco_env, which selects headless rendering before mujoco is first imported
from rl_plasticity.problems.mujoco_env import can_make, envs, make_env
from rl_plasticity.problems.mujoco_eval import PhaseEndEvaluation
from rl_plasticity.run.loop import train_loop
from rl_plasticity.run.rundir import atomic_write
from rl_plasticity.run.seeding import derive_seed, generators
from rl_plasticity.run.tblog import TBLogger, method_stat_tag
from rl_plasticity.run.video import check_frame_size

PHYSICS_CHARTS = {"friction": "charts/friction", "mass_scale": "charts/mass"}

HEADLINE = Headline(metrics=["charts/episodic_return"], x_label="environment steps",
                    charts=[("episodic return", [r"^charts/episodic_return$"]),
                            ("friction / mass", [r"^charts/(friction|mass)$"])])

DEFAULTS = {
    "problem": "ppo",
    "total_steps": 20_000_000,
    "env": {
        "id": "rl_plasticity/FrictionAnt-v0",
        "change_every": None,  # env steps between physics changes (non-stationary envs only); None: env default
        "value_range": None,  # [low, high] of the log-uniform draws; None: env default
        "change_spacing": None,  # "fixed" | "since_last_change" (non-stationary envs only); None: env default
        "max_episode_steps": None,  # None: the env's registered time limit
        "kwargs": {},  # passed to gym.make (e.g. terminate_when_unhealthy: false)
        # The official runs' Ant-v3 (see envs/legacy.py): zeros appended to the observation up to this
        # width (111), and the healthy reward paid on the terminating step too.
        "pad_observation_to": None,
        "survive_reward_on_termination": False,
        # Call the methods' task-switch hook after the update of each rollout in which the physics changed
        # (e.g. `reset.when: task_switch`); off by default: the paper's agent is not told.
        "signal_task_switch": False,
    },
    "ppo": {
        # epochs, minibatch_size, gamma, gae_lambda, clip, vf_coef, ent_coef, advantage_normalization
        # ("batch": over the whole rollout, the paper's; "minibatch": SB3's; "none") and
        # truncation_as_termination (True: the paper's behaviour, no bootstrap at time limits)
        **dataclasses.asdict(PPOSettings()),
        "rollout_steps": 2048,
        "clip_actions": False,  # False: the sampled action goes to the env, which clamps the control (the paper's)
        "log_std_init": 0.0,
        "normalize_obs": False,
        "normalize_reward": False,
        "clip_obs": 10.0,
        "clip_reward": 10.0,
    },
    "net": {"hidden": [256, 256], "activation": "relu", "init": "lecun", "norm": "none"},
    **METHOD_DEFAULTS,
    # Plasticity metrics every `metrics_every` steps on `probe_size` observations: the last ones of the
    # latest rollout, through the nets that acted on them ("rollout", the paper's on-policy sampling), or
    # the first ones of the first rollout, as a fixed probe ("first_rollout").
    "log": {"metrics_every": 10_000, "probe": "rollout", "probe_size": 1000, "checkpoint_every": 500_000,
            "return_window": 20, **LOG_DEFAULTS, **STEP_SIZE_LOG_DEFAULTS},
    # Evaluation episodes at the end of each physics phase (and of the run), logged under eval/;
    # they use their own env and random streams, so training's numbers do not change.
    "eval": {"at_phase_end": False, "episodes": 5, "deterministic": True, "video": False, "video_size": 240},
    "torch_threads": 1,
}
DEFAULTS["optimizer"] = {**METHOD_DEFAULTS["optimizer"], "name": "adam", "lr": 1e-4}
# Optimizers PPO accepts: the others step by the raw gradient (see check).
PPO_OPTIMIZERS = ("adam", "meta_adam")

RULES = {
    **METHOD_RULES, **LOG_RULES, **STEP_SIZE_LOG_RULES,
    "total_steps": Range(low=0, low_open=True),
    "env.change_every": Range(low=1),
    "env.max_episode_steps": Range(low=1),
    "env.change_spacing": OneOf("fixed", "since_last_change"),
    "env.pad_observation_to": Range(low=1),
    "ppo.rollout_steps": Range(low=2),
    "ppo.epochs": Range(low=1),
    "ppo.minibatch_size": Range(low=2),
    "ppo.gamma": Range(low=0, high=1),
    "ppo.gae_lambda": Range(low=0, high=1),
    "ppo.clip": Range(low=0, low_open=True),
    "ppo.vf_coef": Range(low=0),
    "ppo.ent_coef": Range(low=0),
    "ppo.clip_obs": Range(low=0, low_open=True),
    "ppo.clip_reward": Range(low=0, low_open=True),
    "ppo.advantage_normalization": OneOf(*ADVANTAGE_NORMALIZATIONS),
    "net.activation": OneOf(*ACTIVATIONS),
    "net.hidden": LayerSizes(min_len=1),
    "net.init": OneOf(*INITS),
    "net.norm": OneOf(*NORMS),
    "log.metrics_every": Range(low=1),
    "log.probe": OneOf("rollout", "first_rollout"),
    "log.probe_size": Range(low=1),
    "log.checkpoint_every": Range(low=1),
    "log.return_window": Range(low=1),
    "eval.episodes": Range(low=1),
    "eval.video_size": Range(low=16),
    "torch_threads": Range(low=1),
}


def check(cfg: dict) -> None:
    """Constraints that involve several keys or the installed envs."""
    env = cfg["env"]
    check_method_hooks(cfg, {"epoch"} | ({"task_switch"} if env["signal_task_switch"] else set()),
                       {"task_switch": "env.signal_task_switch: true"})
    ours = env["id"] in envs.REGISTERED_IDS
    # Checked before any run directory exists: ids that gymnasium lists but cannot build here (Ant-v2
    # needs the long-gone mujoco-py) are refused like unknown ones, suggesting only ids that work.
    if env["id"] not in gym.registry or not (ours or can_make(env["id"])):
        what = "unknown gymnasium env" if env["id"] not in gym.registry else "gymnasium cannot make"
        known = [k for k in sorted(gym.registry) if "Ant" in k and can_make(k)]
        raise UserError(f"config key 'env.id': {what} {env['id']!r} here (e.g. {', '.join(known)})")
    for key in ("change_every", "value_range", "change_spacing"):
        if env[key] is not None and not ours:
            raise UserError(f"config key 'env.{key}' applies only to the non-stationary envs "
                            f"{list(envs.REGISTERED_IDS)}, not {env['id']!r}")
    vr = env["value_range"]
    if vr is not None and (not isinstance(vr, list) or len(vr) != 2
                           or not all(isinstance(v, (int, float)) and v > 0 for v in vr) or vr[0] > vr[1]):
        raise UserError(f"config key 'env.value_range' must be [low, high] with 0 < low <= high, got {vr!r}")
    p = cfg["ppo"]
    if cfg["log"]["probe_size"] > p["rollout_steps"]:
        raise UserError(f"config key 'log.probe_size' ({cfg['log']['probe_size']}) must be at most "
                        f"'ppo.rollout_steps' ({p['rollout_steps']}): the probe is taken from one rollout")
    if p["rollout_steps"] % p["minibatch_size"]:
        raise UserError(f"config key 'ppo.rollout_steps' ({p['rollout_steps']}) must be a multiple of "
                        f"'ppo.minibatch_size' ({p['minibatch_size']})")
    if cfg["eval"]["video"]:
        check_frame_size(cfg["eval"]["video_size"])
    name = cfg["optimizer"]["name"]
    if name not in PPO_OPTIMIZERS:  # sgd, upgd, idbd, autostep: one raw-gradient scale for both nets' losses
        raise UserError(f"config key 'optimizer.name' must be 'adam' for PPO, or 'meta_adam' for learned per-weight "
                        f"step sizes on Adam's step; got {name!r}: the critic's gradients are orders of magnitude "
                        "larger than the actor's and need Adam's normalisation")
    problem = mlp_config_problem(cfg)
    if problem:
        raise UserError(problem)



def padding_start(env: gym.Env) -> int | None:
    """Where `env.pad_observation_to`'s zeros start in the observation (None: not padded). The nets' first
    layers skip them; normalised observations (`ppo.normalize_obs`) would not leave them zero, so not then."""
    while isinstance(env, gym.Wrapper):
        if isinstance(env, envs.ZeroPadObservation):
            return env.observation_space.shape[0] - env.pad
        env = env.env
    return None

class PPORun:
    """Everything one seed's run holds; `train_update` collects one rollout and learns from it."""

    def __init__(self, cfg: dict, seed: int):
        self.cfg, self.seed = cfg, seed
        p = cfg["ppo"]
        env, limit = make_env(cfg)
        self.runner = EnvRunner(env, limit, seed=derive_seed(seed, "env"), noise_seed=derive_seed(seed, "sample"),
                                normalize_obs=p["normalize_obs"], normalize_reward=p["normalize_reward"],
                                gamma=p["gamma"], clip_obs=p["clip_obs"], clip_reward=p["clip_reward"],
                                clip_actions=p["clip_actions"])
        settings = PPOSettings(**{f.name: p[f.name] for f in dataclasses.fields(PPOSettings)})
        n = cfg["net"]
        self.agent = PPOAgent(self.runner.obs_dim, self.runner.act_dim, n["hidden"], n["activation"], n["init"],
                              p["log_std_init"], settings, cfg, init_generator=generators([seed], "init")[0],
                              method_generators=generators([seed], "method"),
                              minibatch_generator=torch.Generator().manual_seed(derive_seed(seed, "data")),
                              norm=n["norm"], zero_inputs_from=None if p["normalize_obs"] else padding_start(env))
        self.buffer = RolloutBuffer(p["rollout_steps"], self.runner.obs_dim, self.runner.act_dim)
        self.updates = 0
        self.probe: torch.Tensor | None = None  # log.probe "first_rollout": raw observations of the first rollout
        self.returns: deque[float] = deque(maxlen=cfg["log"]["return_window"])
        self.nets = {"actor": self.agent.actor, "critic": self.agent.critic}
        self.distance = {name: DistanceFromInit(net) for name, net in self.nets.items()}  # kept in checkpoints

    @property
    def steps(self) -> int:
        return self.runner.steps

    def train_update(self, measure: bool = False):
        """One rollout and one PPO update. Returns (episodes finished, loss statistics, plasticity
        metrics): the metrics (only if `measure`) are taken before the update, so the nets measured
        are the ones that acted on the probe's observations; weight change is always measured."""
        phase = self.phase()
        episodes, raw_seen = self.runner.collect(self.buffer, self.agent.policy_mean, self.agent.action_std())
        L = self.cfg["log"]
        if self.probe is None and L["probe"] == "first_rollout":
            self.probe = torch.from_numpy(raw_seen[: L["probe_size"]].copy())
        metrics = self.plasticity_metrics() if measure else {}
        weights_before = {name: [layer.weight.detach().clone() for layer in net.layers]
                          for name, net in self.nets.items()}
        losses = self.agent.update(self.buffer)
        for name, net in self.nets.items():  # |change| of weights (not biases) in this update, as the paper logs
            change = sum(float((layer.weight.detach() - before).abs().sum())
                         for layer, before in zip(net.layers, weights_before[name]))
            metrics[f"plasticity/{name}/weight_change"] = change
        if self.cfg["env"]["signal_task_switch"] and self.phase() != phase:
            self.agent.learner.task_switch()
        self.updates += 1
        self.returns.extend(e.ret for e in episodes)
        return episodes, losses, metrics

    def phase(self) -> int:
        """The physics phase the env is in (0 for a stationary env)."""
        schedule = self.runner.schedule
        return schedule.phase if schedule is not None else 0

    # --- the run loop's protocol (rl_plasticity/run/loop.py)
    step = steps

    @property
    def total(self) -> int:
        return self.cfg["total_steps"]

    def done(self) -> bool:
        return self.steps >= self.total

    def should_checkpoint(self) -> bool:
        """Whether the latest rollout crossed a multiple of log.checkpoint_every."""
        every = self.cfg["log"]["checkpoint_every"]
        return self.steps // every != (self.steps - self.buffer.steps) // every

    def advance(self, log: TBLogger, bar=None) -> None:
        """One rollout and its update, logged: returns, losses, methods' statistics, and the plasticity
        metrics when this rollout crosses a multiple of log.metrics_every."""
        L = self.cfg["log"]
        start = time.perf_counter()
        measure = (self.steps + self.buffer.steps) // L["metrics_every"] != self.steps // L["metrics_every"]
        try:
            episodes, losses, metrics = self.train_update(measure)
        except NonFiniteLoss as e:
            raise UserError(f"training diverged at step {self.steps} (update {self.updates + 1}): {e}; "
                            "no checkpoint was written for it - try a smaller optimizer.lr") from None
        histograms = {}
        if measure:
            metrics.update(self.update_metrics())
            step_sizes, histograms = self.step_size_metrics()
            metrics.update(step_sizes)
        step = self.steps
        for ep in episodes:
            log.scalar("charts/episodic_return", ep.ret, ep.step)
            log.scalar("charts/episodic_length", ep.length, ep.step)
        log.scalar("charts/sps", self.buffer.steps / (time.perf_counter() - start), step)
        kind = self.runner.physics_kind
        if kind:
            log.scalar(PHYSICS_CHARTS[kind], self.runner.physics_value, step)
        log.scalars(losses, step, prefix="losses")
        for key, value in self.agent.learner.stats().items():
            log.scalar(method_stat_tag(key), value, step)
        for tag, value in metrics.items():
            log.scalar(tag, value, step)
        for tag, values in histograms.items():
            log.histogram(tag, values, step)
        if bar is not None:
            postfix = {"ret": f"{np.mean(self.returns):.0f}" if self.returns else "-"}
            if kind:
                postfix[kind] = f"{self.runner.physics_value:.3g}"
            bar.set_postfix(postfix, refresh=False)

    def probe_observations(self) -> torch.Tensor:
        """The observations the plasticity metrics are measured on, as the policy sees them."""
        if self.cfg["log"]["probe"] == "rollout":
            return torch.from_numpy(self.buffer.obs[-self.cfg["log"]["probe_size"]:])
        return torch.from_numpy(self.runner.normalize_probe(self.probe.numpy()))

    def plasticity_metrics(self) -> dict[str, float]:
        """Dormant and tau-dormant fractions, stable and effective rank and feature norm of every hidden
        layer, and mean |weight| of every layer, of actor and critic: {'plasticity/actor/layer0/dormant_fraction':
        ..., ...}."""
        probe, tau = self.probe_observations(), self.cfg["log"]["dormant_tau"]
        return {_metric_tag(name, key): float(value[0])
                for name, net in self.nets.items() for key, value in probe_metrics(net, probe, tau=tau).items()}

    def update_metrics(self) -> dict[str, float]:
        """After an update, per layer of actor and critic: the weight-gradient norm and GraMa's inactive
        fraction of the update's last minibatch step, and the distance of the weights from their init."""
        grads, grama_tau = self.agent.learner.latest_gradients(), self.cfg["log"]["grama_tau"]
        return {_metric_tag(name, key): float(value[0]) for name, net in self.nets.items()
                for key, value in {**gradient_metrics(net, grads, grama_tau), **self.distance[name]()}.items()}

    def step_size_metrics(self) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """Per layer of actor and critic, for optimizers that learn a step size per weight (meta_adam): the
        quantiles and collapsed fraction of the weights' step sizes, and their log10 for histograms."""
        scalars, histograms, collapsed = {}, {}, collapse_threshold(self.cfg)
        for name, net in self.nets.items():
            values, logs = step_size_metrics(self.agent.learner.optimizer, net, collapsed)
            scalars.update({_metric_tag(name, key): float(v[0]) for key, v in values.items()})
            histograms.update({_metric_tag(name, key): v[0] for key, v in logs.items()})
        return scalars, histograms

    def state_dict(self) -> dict:
        return {"config": json.dumps(self.cfg, sort_keys=True), "seed": self.seed, "updates": self.updates,
                "agent": self.agent.state_dict(), "env": self.runner.state_dict(), "probe": self.probe,
                "returns": list(self.returns), "init_weights": {k: d.state_dict() for k, d in self.distance.items()}}

    def load_state_dict(self, sd: dict, source: str = "it") -> None:
        saved = json.loads(sd["config"])
        diff = config_differences(saved, self.cfg)
        if diff or sd["seed"] != self.seed:
            what = f"keys {', '.join(diff[:5])}" if diff else f"seed {sd['seed']} vs {self.seed}"
            raise UserError(f"{source} belongs to another run configuration ({what} differ); "
                            "resume it from its own run directory")
        self.updates = int(sd["updates"])
        self.agent.load_state_dict(sd["agent"])
        self.runner.load_state_dict(sd["env"])
        self.probe = sd["probe"]
        self.returns.clear()
        self.returns.extend(float(r) for r in sd["returns"])
        for name, initial in sd.get("init_weights", {}).items():  # older checkpoints: the init rebuilt from the seed
            self.distance[name].load_state_dict(initial)


def config_differences(saved: dict, current: dict) -> list[str]:
    """Keys (dotted, sorted) in which the config a checkpoint was written with and a run's current
    config differ. Left out: evaluation settings (they do not change training), and keys the toolkit
    gained after the checkpoint was written that are at their defaults (they reproduce the behaviour
    from before they existed), so long runs survive upgrades."""
    plain = json.loads(json.dumps(current, sort_keys=True))
    keys = _differences({k: v for k, v in saved.items() if k != "eval"},
                        {k: v for k, v in plain.items() if k != "eval"})
    return sorted(k for k in keys if not (_lookup(saved, k) is _MISSING and _lookup(plain, k) == _lookup(DEFAULTS, k)))


_MISSING = object()


def _lookup(cfg: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(cfg, dict) or part not in cfg:
            return _MISSING
        cfg = cfg[part]
    return cfg


def _differences(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in set(a) | set(b):
            out += _differences(a.get(k), b.get(k), f"{prefix}{k}.") if k in a and k in b else [prefix + str(k)]
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _metric_tag(net: str, key: str) -> str:
    """probe_metrics keys are 'actor/layer0/stable_rank' (groups) or 'layer2/mean_abs_weight' (layers)."""
    key = key[len(net) + 1:] if key.startswith(net + "/") else key
    return f"plasticity/{net}/{key}"


def run(cfg: dict, seeds: list[int], run_dir: Path, resume: bool = False) -> dict:
    if len(seeds) != 1:
        raise UserError(f"ppo runs one seed per process (got {len(seeds)}); use --seed K and one process per seed")
    torch.set_num_threads(cfg["torch_threads"])
    state = PPORun(cfg, seeds[0])
    callbacks = [PhaseEndEvaluation()] if cfg["eval"]["at_phase_end"] else []
    if not train_loop(state, run_dir, resume, lambda purge: TBLogger(run_dir / "tb", purge_step=purge),
                      f"ppo {cfg['env']['id'].split('/')[-1]} seed {seeds[0]}", "step", callbacks=callbacks):
        return {}
    summary = {"steps": state.steps, "updates": state.updates,
               "recent_return": float(np.mean(state.returns)) if state.returns else None}
    atomic_write(run_dir / "results.json", json.dumps(summary, indent=1))
    recent = "n/a" if summary["recent_return"] is None else f"{summary['recent_return']:,.1f}"
    print(f"done: {state.steps:,} steps, mean return of the last {len(state.returns)} episodes: {recent}")
    return summary
