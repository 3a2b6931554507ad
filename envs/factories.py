"""Entry points for the registered ids: a bare gymnasium MuJoCo env inside a schedule wrapper.

`gym.make` adds the time limit, order check and passive checker around what these return, so the
base env is built from its spec's kwargs (and entry point, unless given) without those wrappers. The Ants
are envs/ant.py's `Ant`: Ant-v5 with a step that skips the contact forces nothing reads.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from gymnasium.envs.registration import load_env_creator

from rl_plasticity.envs.ant import Ant
from rl_plasticity.envs.nonstationary import ChangingFriction, ChangingMass, NonstationaryPhysics

SCHEDULE_KWARGS = ("change_every", "value_range", "values", "after_last", "schedule_seed", "spacing")


def make_nonstationary(base_id: str, wrapper: type[NonstationaryPhysics], creator=None,
                       **kwargs: Any) -> NonstationaryPhysics:
    """`wrapper(<base_id env, no gym.make wrappers>)`; schedule kwargs go to the wrapper, the rest to the env.
    creator: builds the env from the spec's kwargs (default: the spec's entry point)."""
    schedule_kwargs = {k: kwargs.pop(k) for k in SCHEDULE_KWARGS if k in kwargs}
    spec = gym.spec(base_id)
    if creator is None:
        creator = load_env_creator(spec.entry_point) if isinstance(spec.entry_point, str) else spec.entry_point
    return wrapper(creator(**{**spec.kwargs, **kwargs}), **schedule_kwargs)


def friction_ant(**kwargs: Any) -> NonstationaryPhysics:
    """Ant-v5 with the sliding friction of all geoms changing on a schedule."""
    return make_nonstationary("Ant-v5", ChangingFriction, Ant, **kwargs)


def mass_ant(**kwargs: Any) -> NonstationaryPhysics:
    """Ant-v5 with all body masses and inertias scaled on a schedule."""
    return make_nonstationary("Ant-v5", ChangingMass, Ant, **kwargs)
