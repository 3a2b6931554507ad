"""An environment for evaluation: a run's env, held at one chosen physics value, optionally rendering.

Physics is named by kind, as the env wrappers name it: "friction" (sliding coefficient of all geoms,
absolute) or "mass_scale" (factor on every body's mass and inertia). A run's non-stationary env gets
the value as its schedule's only value (`values=[v]`); the other kind, and any kind on a stationary
env, is set on the MuJoCo model directly (envs.physics), where it survives resets.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass

import gymnasium as gym
from gymnasium.wrappers import OrderEnforcing, PassiveEnvChecker, TimeLimit

from rl_plasticity.errors import UserError
from rl_plasticity.run.video import TRACKING_CAMERA, check_frame_size, use_headless_gl

use_headless_gl()  # before anything imports mujoco, hence the imports below it

from rl_plasticity import envs  # noqa: E402
from rl_plasticity.agents.env_runner import find_schedule  # noqa: E402
from rl_plasticity.envs.physics import MassScaler, find_mujoco_model, set_sliding_friction  # noqa: E402
from rl_plasticity.run.seeding import derive_seed  # noqa: E402

KINDS = ("friction", "mass_scale")
OPTION = {"friction": "--friction", "mass_scale": "--mass"}
# Sane bounds, documented in the CLI help. Friction below 1e-3 leaves nothing to push against and
# above 10 every contact sticks; masses scaled beyond 20x either way make the Ant's motors either
# unable to lift it or able to fling it, and the integrator goes unstable at the extremes. The
# paper's ranges (friction 0.02-2, mass 0.5-2) sit well inside.
BOUNDS = {"friction": (1e-3, 10.0), "mass_scale": (0.05, 20.0)}
# The Ant's own values: the schedule of a run's env is held here when the other kind is evaluated.
BASE_VALUE = {"friction": 1.0, "mass_scale": 1.0}


@dataclass(frozen=True)
class Physics:
    kind: str
    value: float

    @property
    def name(self) -> str:
        """Short name for labels, file names and tags: friction, mass."""
        return "mass" if self.kind == "mass_scale" else self.kind

    def label(self) -> str:
        return f"{self.name} {self.value:.4g}"


def physics(kind: str, value: float) -> Physics:
    """A checked physics value: positive, finite and within BOUNDS; otherwise a UserError."""
    if kind not in KINDS:
        raise UserError(f"physics kind must be one of {KINDS}, got {kind!r}")
    low, high = BOUNDS[kind]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise UserError(f"{OPTION[kind]} must be a positive number, got {value!r}")
    if not low <= value <= high:
        raise UserError(f"{OPTION[kind]} {value:g} is outside the supported range [{low:g}, {high:g}]")
    return Physics(kind, float(value))


def can_make(env_id: str) -> bool:
    """Whether gymnasium can build `env_id` here (old ids registered for mujoco-py cannot)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gym.make(env_id, disable_env_checker=True).close()
    except Exception:  # noqa: BLE001 - any failure means "do not suggest it"
        return False
    return True


def make_env(cfg: dict):
    """(env, episode step limit) for a resolved PPO config. The env has no time-limit or order
    wrappers: the runner counts episode steps itself, so that they are part of its saved state."""
    env_cfg = cfg["env"]
    kwargs = dict(env_cfg["kwargs"])
    if env_cfg["id"] in envs.REGISTERED_IDS:
        for key, arg in (("change_every", "change_every"), ("value_range", "value_range"),
                         ("change_spacing", "spacing")):
            if env_cfg[key] is not None:
                kwargs[arg] = tuple(env_cfg[key]) if key == "value_range" else env_cfg[key]
    try:
        with warnings.catch_warnings():  # gymnasium's "out of date" notice is not our one-line error
            warnings.simplefilter("ignore", DeprecationWarning)
            env = gym.make(env_cfg["id"], disable_env_checker=True, **kwargs)
    except TypeError as e:
        raise UserError(f"config key 'env.kwargs' does not suit {env_cfg['id']!r}: {e}") from None
    except (gym.error.Error, ImportError) as e:  # e.g. an id registered for the long-gone mujoco-py
        raise UserError(f"config key 'env.id': gymnasium cannot make {env_cfg['id']!r} here: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    limit = env_cfg["max_episode_steps"] or (env.spec.max_episode_steps if env.spec else None) or 1_000_000_000
    while isinstance(env, (TimeLimit, OrderEnforcing, PassiveEnvChecker)):
        env = env.env
    try:
        if env_cfg["survive_reward_on_termination"]:
            env = envs.SurviveRewardOnTermination(env)
        if env_cfg["pad_observation_to"] is not None:
            env = envs.ZeroPadObservation(env, env_cfg["pad_observation_to"])
    except (TypeError, ValueError) as e:
        env.close()
        raise UserError(f"config key 'env' does not suit {env_cfg['id']!r}: {e}") from None
    return env, limit


def schedule_kind(env_id: str) -> str | None:
    """The kind a registered non-stationary env schedules, None for a stationary env."""
    return {envs.FRICTION_ANT_ID: "friction", envs.MASS_ANT_ID: "mass_scale"}.get(env_id)


def make_eval_env(cfg: dict, target: Physics | None, render_size: int | None = None) -> tuple[gym.Env, int]:
    """(env, episode step limit) for a resolved PPO config, at `target` physics (None: the env's own).

    The returned env has no time-limit or order wrappers: callers count steps against the limit,
    as the training runner does. With `render_size`, `env.render()` returns square RGB frames from
    the tracking camera.
    """

    cfg = copy.deepcopy(cfg)
    kwargs = dict(cfg["env"]["kwargs"])
    if render_size is not None:
        size = check_frame_size(render_size)
        kwargs.update(render_mode="rgb_array", width=size, height=size, camera_name=TRACKING_CAMERA)
    own = schedule_kind(cfg["env"]["id"])
    if own is not None and target is not None:
        kwargs["values"] = [target.value if target.kind == own else BASE_VALUE[own]]
    cfg["env"]["kwargs"] = kwargs
    env, limit = make_env(cfg)
    while isinstance(env, (TimeLimit, OrderEnforcing, PassiveEnvChecker)):
        env = env.env
    if target is not None and target.kind != own:
        model, data = find_mujoco_model(env)
        if target.kind == "friction":
            set_sliding_friction(model, target.value)
        else:
            MassScaler(model).apply(model, data, target.value)
    return env, limit


def phase_physics(cfg: dict, seed: int, phase: int) -> Physics:
    """The physics of phase `phase` of the run (cfg, seed): its schedule replayed, no env stepped.

    The training runner seeds its env with derive_seed(seed, "env"); the schedule draws from that
    seed, so starting a fresh env the same way and moving its schedule to the phase's first step
    gives the same value.
    """
    kind = schedule_kind(cfg["env"]["id"])
    if kind is None:
        raise UserError(f"--phase needs a run on a non-stationary env; {cfg['env']['id']!r} has one physics")
    if isinstance(phase, bool) or not isinstance(phase, int) or phase < 0:
        raise UserError(f"--phase must be an integer >= 0, got {phase!r}")
    change_every = cfg["env"]["change_every"] or cfg["env"]["kwargs"].get("change_every", envs.DEFAULT_CHANGE_EVERY)
    last = (cfg["total_steps"] - 1) // change_every  # no phase starts before step K * change_every
    if phase > last:
        raise UserError(f"--phase {phase} is beyond the run: its {cfg['total_steps']:,} steps in phases of "
                        f"{change_every:,} hold phases 0-{last}")
    env, _ = make_env(cfg)
    try:
        schedule = find_schedule(env)
        env.reset(seed=derive_seed(seed, "env"))
        for k in range(1, phase + 1):  # one switch per reset, under either spacing of the switches
            state = schedule.get_schedule_state()
            state.update(steps=k * change_every, pending=True)
            schedule.set_schedule_state(state)
            env.reset()
        return Physics(kind, float(schedule.physics_value))
    finally:
        env.close()
