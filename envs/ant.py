"""gymnasium's Ant-v5 with a step that spends nothing beyond MuJoCo's own work when nothing reads it.

`Ant` is gymnasium's `AntEnv` (same constructor, spaces, reset, rendering, env checker) whose `step`
computes the same observation, reward, termination and info with the same floating-point operations,
only without the work whose result is then discarded:
- `mj_rnePostConstraint` (the contact forces `cfrc_ext`) runs only when the observation includes the
  contact forces or the contact cost has a weight; the simulation never reads what it computes, so the
  trajectory is unchanged (the official Ant-v3 runs never computed them: envs/legacy.py);
- the health check (finite state, torso height in range) runs once, not twice, on qpos and qvel
  without concatenating them;
- the torso position is read by body index instead of by name.
With contact forces needed, `step` is gymnasium's own. tests/test_ant_env.py checks, step by step
against gymnasium's Ant-v5, that every output is bit-identical in both cases.
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np
from gymnasium.envs.mujoco.ant_v5 import AntEnv


class Ant(AntEnv):
    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._torso = self.data.body(self._main_body).id
        self._needs_contact_forces = self._include_cfrc_ext_in_observation or self._contact_cost_weight != 0

    def step(self, action):
        if self._needs_contact_forces:
            return super().step(action)
        data = self.data
        if np.shape(action) != (self.model.nu,):  # gymnasium's do_simulation check
            raise ValueError(f"Action dimension mismatch. Expected {(self.model.nu,)}, found {np.shape(action)}")
        xy_before = data.xpos[self._torso, :2].copy()
        data.ctrl[:] = action
        mujoco.mj_step(self.model, data, nstep=self.frame_skip)
        x_velocity, y_velocity = (data.xpos[self._torso, :2] - xy_before) / self.dt

        qpos, qvel = data.qpos, data.qvel
        min_z, max_z = self._healthy_z_range
        healthy = np.isfinite(qpos).all() and np.isfinite(qvel).all() and min_z <= qpos[2] <= max_z  # np.bool_, as theirs
        observation = np.concatenate((qpos[2:] if self._exclude_current_positions_from_observation else qpos, qvel))

        forward_reward = x_velocity * self._forward_reward_weight
        healthy_reward = healthy * self._healthy_reward
        ctrl_cost = self.control_cost(action)
        contact_cost = self._contact_cost_weight * np.float64(0.0)  # the weight is 0: gymnasium's 0 * sum(...)
        reward = (forward_reward + healthy_reward) - (ctrl_cost + contact_cost)
        info = {"x_position": qpos[0], "y_position": qpos[1],
                "distance_from_origin": np.sqrt(qpos[:2].dot(qpos[:2])),  # np.linalg.norm's own formula
                "x_velocity": x_velocity, "y_velocity": y_velocity,
                "reward_forward": forward_reward, "reward_ctrl": -ctrl_cost, "reward_contact": -contact_cost,
                "reward_survive": healthy_reward}
        if self.render_mode == "human":
            self.render()
        return observation, reward, (not healthy) and self._terminate_when_unhealthy, False, info
