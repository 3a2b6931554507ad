"""Ant-v5 as the paper's official runs saw Ant-v3 (gym 0.23 on mujoco-py 2.x).

Two things of that Ant-v3 are not reproduced by Ant-v5's arguments alone:

- Its observation had 111 entries: 27 positions and velocities, then 84 contact forces (cfrc_ext of
  14 bodies x 6) that were always zero, because MuJoCo >= 2.0 fills cfrc_ext only in
  mj_rnePostConstraint, which mujoco-py 2.x did not call (so its contact cost was zero too). The
  zeros matter to the learner: its first layers had fan-in 111, which sets the LeCun init bound and
  continual backprop's re-init bound, and the weights reading them count in the weight metrics.
  `ZeroPadObservation(env, 111)` on Ant-v5 built with `include_cfrc_ext_in_observation=False`
  gives the same vector (the zeros come last, as in v3).
- It paid the healthy reward on every step, also on the step at which the ant became unhealthy and
  the episode terminated (v3's `healthy_reward` is `float(is_healthy or terminate_when_unhealthy)`);
  Ant-v5 pays it only while healthy. `SurviveRewardOnTermination` adds it back on that step.

Together with `contact_cost_weight=0`, these make Ant-v5's observation and reward those of the
official runs. The simulator itself differs (MuJoCo 2.x then, the installed MuJoCo now); no wrapper
can change that.
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np


class ZeroPadObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Append zeros to a flat Box observation until it has `width` entries."""

    def __init__(self, env: gym.Env, width: int):
        gym.utils.RecordConstructorArgs.__init__(self, width=width)
        gym.ObservationWrapper.__init__(self, env)
        space = env.observation_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise TypeError(f"ZeroPadObservation needs a flat Box observation space, got {space}")
        self.pad = int(width) - space.shape[0]
        if self.pad < 0:
            raise ValueError(f"cannot pad a {space.shape[0]}-entry observation to {width} entries")
        # Unbounded like the rest of the vector, as v3 declared its contact-force entries.
        inf = np.full(self.pad, np.inf, space.dtype)
        self.observation_space = gym.spaces.Box(np.concatenate([space.low, -inf]),
                                                np.concatenate([space.high, inf]), dtype=space.dtype)
        self._zeros = np.zeros(self.pad, space.dtype)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.concatenate([observation, self._zeros])


class SurviveRewardOnTermination(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Pay the healthy reward also on the step that terminates an episode (Ant-v3's reward)."""

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)
        base = env.unwrapped
        if not hasattr(base, "_healthy_reward"):
            raise TypeError(f"{type(base).__name__} has no healthy reward to pay")
        self.healthy_reward = float(base._healthy_reward)

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated and info.get("reward_survive", 0.0) == 0.0:
            reward = float(reward) + self.healthy_reward
            info["reward_survive"] = self.healthy_reward
        return obs, reward, terminated, truncated, info
