"""Gymnasium wrappers that make a MuJoCo env non-stationary: friction or mass changes on a schedule.

    env = ChangingFriction(gym.make("Hopper-v5"), change_every=2_000_000)
    obs, info = env.reset(seed=0)          # phase 0 starts here, its value drawn from the seed
    obs, r, term, trunc, info = env.step(a)
    info["friction"], info["phase"]        # on every step and reset

Schedule (see envs/schedule.py): env steps are counted through this wrapper; every `change_every`
steps a mark passes and the next value is applied at the first reset after it, before the inner
env resets, so the new episode starts on the new physics. Values are log-uniform in `value_range`,
drawn by a numpy generator seeded from the seed of the first reset (or `schedule_seed`), or come
from an explicit `values` list, cycled (`after_last="cycle"`, the default) or held at the last
(`after_last="hold"`). Phase 0 is on schedule too: it uses the first drawn (or listed) value, not
the env's base physics; to start from base physics, list it first: `values=[1.0, ...]`.

Saving and restoring the schedule (the env's episode state is not part of it: restore, then reset):

    state = get_schedule_state(env)        # plain dict; json.dumps and torch.save take it
    set_schedule_state(new_env, state)     # then new_env.reset(...): same values, same switch points

Both find the wrapper through any outer wrappers (`env.get_wrapper_attr`). In a vector env each
sub-env has its own schedule and step counter:

    states = envs.call("get_schedule_state")                       # gymnasium SyncVectorEnv
    for sub, state in zip(envs.envs, states): set_schedule_state(sub, state)
    states = vec_env.env_method("get_schedule_state")              # SB3 DummyVecEnv
    vec_env.env_method("set_schedule_state", states[i], indices=i)

(`envs.call("set_schedule_state", state)` gives every sub-env the same state.)
"""

from __future__ import annotations

from typing import Any, ClassVar, SupportsFloat

import gymnasium as gym
import numpy as np

from rl_plasticity.envs.physics import MassScaler, find_mujoco_model, set_sliding_friction
from rl_plasticity.envs.schedule import DEFAULT_CHANGE_EVERY, AfterLast, Spacing, ValueSchedule


class NonstationaryPhysics(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Base of the family: runs a `ValueSchedule` and applies its value to the MuJoCo model.

    Subclasses say what the value is (`kind`, also the `info` key), its default range, and how to
    apply it (`_apply`, `restore_base_physics`).

    Args:
        env: a gymnasium MuJoCo env (possibly wrapped).
        change_every: env steps between changes (>= 1); the switch happens at the first reset after.
        value_range: (low, high) for log-uniform draws; None means the subclass's default.
        values: explicit values for phases 0, 1, 2, ... instead of draws.
        after_last: with `values`, "cycle" (default) repeats the list, "hold" keeps the last value.
        schedule_seed: seed for the draws; None means the seed given to the first reset. Give the
            same one to every sub-env of a vector env to have them share one sequence.
        spacing: "fixed" (switch after each multiple of change_every) or "since_last_change"
            (change_every steps after the previous switch, as the paper's official code did).
    """

    kind: ClassVar[str]
    default_range: ClassVar[tuple[float, float]]

    def __init__(
        self,
        env: gym.Env,
        *,
        change_every: int = DEFAULT_CHANGE_EVERY,
        value_range: tuple[float, float] | None = None,
        values: list[float] | None = None,
        after_last: AfterLast = "cycle",
        schedule_seed: int | None = None,
        spacing: Spacing = "fixed",
    ) -> None:
        self._model, self._data = find_mujoco_model(env)
        if env.has_wrapper_attr("get_schedule_state"):
            # Two schedules would write the same info["phase"], and save/restore would reach only the outer one.
            raise ValueError(f"{env} already has a non-stationary physics wrapper; use one per env")
        # Recorded so env.spec can rebuild this wrapper (gymnasium's check_env and gym.make(spec) do).
        gym.utils.RecordConstructorArgs.__init__(
            self, change_every=change_every, value_range=value_range, values=values,
            after_last=after_last, schedule_seed=schedule_seed, spacing=spacing,
        )
        gym.Wrapper.__init__(self, env)
        self._schedule = ValueSchedule(
            self.kind,
            change_every=change_every,
            value_range=self.default_range if value_range is None else value_range,
            values=values,
            after_last=after_last,
            seed=schedule_seed,
            spacing=spacing,
        )

    # -- gymnasium API ---------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Start phase 0 on the first call, switch physics if a mark passed, then reset the env."""
        schedule = self._schedule
        if not schedule.started:
            self._apply(schedule.start(seed))
        elif schedule.advance():
            self._apply(schedule.value)
        obs, info = self.env.reset(seed=seed, options=options)
        info[self.kind] = schedule.value
        info["phase"] = schedule.phase
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step the env and count the step toward the next mark."""
        schedule = self._schedule
        if not schedule.started:
            raise gym.error.ResetNeeded("call reset() before step(): the physics schedule starts at a reset")
        obs, reward, terminated, truncated, info = self.env.step(action)
        schedule.count_step()
        info[self.kind] = schedule.value
        info["phase"] = schedule.phase
        return obs, reward, terminated, truncated, info

    # -- schedule access -------------------------------------------------------------------------

    @property
    def physics_value(self) -> float | None:
        """The value in force now (None before the first reset)."""
        return self._schedule.value

    @property
    def phase(self) -> int:
        """Index of the current phase (0 until the first switch)."""
        return self._schedule.phase

    @property
    def schedule_steps(self) -> int:
        """Env steps counted so far."""
        return self._schedule.steps

    def get_schedule_state(self) -> dict[str, Any]:
        """Where the schedule stands, as plain data: kind, steps, phase, pending, value, started, rng."""
        return self._schedule.get_state()

    def set_schedule_state(self, state: dict[str, Any]) -> None:
        """Continue from `get_schedule_state()`'s dict; the restored value is applied to the model now."""
        self._schedule.set_state(state)
        if self._schedule.started:
            self._apply(self._schedule.value)

    # -- physics ---------------------------------------------------------------------------------

    def _apply(self, value: float) -> None:
        raise NotImplementedError

    def restore_base_physics(self) -> None:
        """Put the model back to the physics it had when wrapped (the schedule is not touched)."""
        raise NotImplementedError


class ChangingFriction(NonstationaryPhysics):
    """Sliding friction of ALL geoms set to the schedule's value (absolute, not a factor).

    `info["friction"]` carries it. Default range [0.02, 2.0], as in Dohare et al. (2024).
    """

    kind = "friction"
    default_range = (0.02, 2.0)

    def __init__(self, env: gym.Env, **schedule_kwargs: Any) -> None:
        super().__init__(env, **schedule_kwargs)
        # reset() leaves the model alone, so the base values exist only if kept here.
        self._base_friction = self._model.geom_friction.copy()

    def _apply(self, value: float) -> None:
        set_sliding_friction(self._model, value)

    def restore_base_physics(self) -> None:
        np.copyto(self._model.geom_friction, self._base_friction)


class ChangingMass(NonstationaryPhysics):
    """Masses and inertias of all bodies scaled by the schedule's value, from their base values.

    `info["mass_scale"]` carries the factor. Default range [0.5, 2.0].
    """

    kind = "mass_scale"
    default_range = (0.5, 2.0)

    def __init__(self, env: gym.Env, **schedule_kwargs: Any) -> None:
        super().__init__(env, **schedule_kwargs)
        self._scaler = MassScaler(self._model)

    def _apply(self, value: float) -> None:
        self._scaler.apply(self._model, self._data, value)

    def restore_base_physics(self) -> None:
        self._scaler.restore(self._model, self._data)


def _schedule_method(env: gym.Env, name: str) -> Any:
    try:
        return env.get_wrapper_attr(name)
    except AttributeError:
        raise TypeError(
            f"{env} has no non-stationary physics wrapper (ChangingFriction/ChangingMass); "
            "for a vector env use envs.call(...) / env_method(...) on its sub-envs"
        ) from None


def get_schedule_state(env: gym.Env) -> dict[str, Any]:
    """The schedule state of the `NonstationaryPhysics` wrapper inside `env` (through any wrappers)."""
    return _schedule_method(env, "get_schedule_state")()


def set_schedule_state(env: gym.Env, state: dict[str, Any]) -> None:
    """Restore a schedule state into the `NonstationaryPhysics` wrapper inside `env`; reset next."""
    _schedule_method(env, "set_schedule_state")(state)
