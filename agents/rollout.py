"""Rollout storage and generalised advantage estimation (GAE).

The buffer is allocated once and refilled every rollout. Besides the usual arrays it keeps, for
every step that ended an episode by truncation (time limit), the observation the episode ended on:
its value is what a truncated episode must be bootstrapped with, and it is not the next stored
observation (that one starts the next episode).
"""

from __future__ import annotations

import numpy as np


class RolloutBuffer:
    def __init__(self, steps: int, obs_dim: int, act_dim: int):
        self.steps = steps
        self.obs = np.zeros((steps, obs_dim), np.float32)
        self.actions = np.zeros((steps, act_dim), np.float32)
        self.rewards = np.zeros(steps, np.float64)
        self.terminated = np.zeros(steps, bool)  # the MDP ended: no bootstrap
        self.ended = np.zeros(steps, bool)  # terminated or truncated: the advantage chain is cut
        self.truncated_obs: dict[int, np.ndarray] = {}  # step -> final observation of a truncated episode
        self.last_obs = np.zeros(obs_dim, np.float32)  # observation after the last step (for bootstrapping)

    def clear(self) -> None:
        self.truncated_obs.clear()


def compute_gae(rewards: np.ndarray, values: np.ndarray, next_values: np.ndarray, terminated: np.ndarray,
                ended: np.ndarray, gamma: float, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Advantages and returns (advantage + value) of one rollout, all arrays [T].

    next_values[t] is V of the state step t led to: the next stored observation, the final
    observation of a truncated episode, or anything at all for a terminated one (it is ignored).
    delta_t = r_t + gamma * V(s_t+1) * (1 - terminated_t) - V(s_t)
    A_t     = delta_t + gamma * lam * (1 - ended_t) * A_t+1
    """
    r, v, nv = rewards.tolist(), values.tolist(), next_values.tolist()
    term, end = terminated.tolist(), ended.tolist()
    adv = [0.0] * len(r)
    running = 0.0
    for t in range(len(r) - 1, -1, -1):
        delta = r[t] + (0.0 if term[t] else gamma * nv[t]) - v[t]
        running = delta + (0.0 if end[t] else gamma * lam * running)
        adv[t] = running
    advantages = np.asarray(adv, np.float64)
    return advantages, advantages + values.astype(np.float64)


def next_state_values(values: np.ndarray, last_value: float, ended: np.ndarray,
                      truncated_values: dict[int, float]) -> np.ndarray:
    """next_values for `compute_gae`: the following step's value, the last observation's value at the
    end of the rollout, and a truncated episode's final-observation value where one ended."""
    nv = np.empty(len(values), np.float64)
    nv[:-1] = values[1:]
    nv[-1] = last_value
    nv[ended] = 0.0  # terminated episodes: never used; truncated ones are filled in next
    for t, value in truncated_values.items():
        nv[t] = value
    return nv
