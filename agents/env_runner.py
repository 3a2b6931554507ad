"""One environment, stepped by a policy into a RolloutBuffer; its whole state can be saved and restored.

The time limit is applied here rather than by gymnasium's TimeLimit wrapper: the episode-length
counter is then part of the runner's own state, and a resumed run truncates at the same step.
Everything needed to continue an episode exactly after a restore is saved: the MuJoCo integration
state, the body positions the next step's reward reads before simulating, the env's reset RNG, the
physics schedule, the current observation and the episode's running return and length.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import mujoco
import numpy as np
import torch
from gymnasium.wrappers import OrderEnforcing, PassiveEnvChecker, TimeLimit

from rl_plasticity.agents.normalize import ObsNormalizer, RewardScaler
from rl_plasticity.agents.rollout import RolloutBuffer
from rl_plasticity.run.checkpoint import generator_state, set_generator_state

_STATE_SPEC = mujoco.mjtState.mjSTATE_INTEGRATION


@dataclass
class Episode:
    step: int  # global env step at which it ended
    ret: float
    length: int
    physics: float | None  # friction / mass scale during the episode


def find_schedule(env: gym.Env):
    """The NonstationaryPhysics wrapper inside env, or None for a stationary env."""
    from rl_plasticity.envs import NonstationaryPhysics  # here: importing envs loads mujoco (headless GL first)

    while isinstance(env, gym.Wrapper):
        if isinstance(env, NonstationaryPhysics):
            return env
        env = env.env
    return None


class EnvRunner:
    def __init__(self, env: gym.Env, max_episode_steps: int, seed: int, noise_seed: int,
                 normalize_obs: bool = False, normalize_reward: bool = False, gamma: float = 0.99,
                 clip_obs: float = 10.0, clip_reward: float = 10.0, clip_actions: bool = False):
        # gym.make's bookkeeping wrappers go: the loop below enforces order and the time limit itself.
        while isinstance(env, (TimeLimit, OrderEnforcing, PassiveEnvChecker)):
            env = env.env
        self.env, self.base = env, env.unwrapped
        self.schedule = find_schedule(env)
        self.physics_kind = self.schedule.kind if self.schedule is not None else None
        self.max_episode_steps = max_episode_steps
        self.low, self.high = env.action_space.low, env.action_space.high
        self.clip_actions = clip_actions
        self.obs_dim, self.act_dim = env.observation_space.shape[0], env.action_space.shape[0]
        self.noise_rng = np.random.default_rng(noise_seed)
        self.obs_norm = ObsNormalizer(self.obs_dim, clip_obs) if normalize_obs else None
        self.reward_scaler = RewardScaler(gamma, clip_reward) if normalize_reward else None
        raw, _ = env.reset(seed=seed)
        self.raw_obs = np.asarray(raw, np.float64)
        self.obs = self._normalize(self.raw_obs)
        self.episode_return, self.episode_length = 0.0, 0
        self.steps = 0

    @property
    def physics_value(self) -> float | None:
        return None if self.schedule is None else self.schedule.physics_value

    def _normalize(self, raw: np.ndarray, update: bool = True) -> np.ndarray:
        obs = self.obs_norm(raw, update) if self.obs_norm is not None else raw
        return obs.astype(np.float32)

    def normalize_probe(self, raw: np.ndarray) -> np.ndarray:
        """Observations as the policy sees them now (without updating the statistics)."""
        if self.obs_norm is None:
            return raw.astype(np.float32)
        return np.stack([self._normalize(o, update=False) for o in raw])

    def collect(self, buf: RolloutBuffer, policy_mean, std: np.ndarray) -> tuple[list[Episode], np.ndarray]:
        """Fill `buf` with buf.steps transitions. Actions are mean + std * N(0, 1); the env gets them as
        sampled (MuJoCo clamps the control, and the control cost is charged on the sampled action, as
        in the paper's runs) or, with `clip_actions`, clipped to the action bounds (SB3's and CleanRL's
        way). The buffer keeps them as sampled. Returns finished episodes and the raw observations seen."""
        buf.clear()
        noise = self.noise_rng.standard_normal((buf.steps, self.act_dim)).astype(np.float32) * std
        raw_seen = np.empty((buf.steps, self.obs_dim), np.float64)
        episodes: list[Episode] = []
        step, low, high, clip = self.env.step, self.low, self.high, self.clip_actions
        obs, raw = self.obs, self.raw_obs
        for t in range(buf.steps):
            raw_seen[t] = raw
            action = policy_mean(obs) + noise[t]
            buf.obs[t] = obs
            buf.actions[t] = action
            raw, reward, terminated, truncated, _ = step(np.clip(action, low, high) if clip else action)
            reward = float(reward)
            self.steps += 1
            self.episode_return += reward
            self.episode_length += 1
            truncated = truncated or self.episode_length >= self.max_episode_steps
            ended = terminated or truncated
            if self.reward_scaler is not None:
                reward = self.reward_scaler(reward, ended)
            buf.rewards[t] = reward
            buf.terminated[t] = terminated
            buf.ended[t] = ended
            raw = np.asarray(raw, np.float64)
            obs = self._normalize(raw)
            if ended:
                if not terminated:
                    buf.truncated_obs[t] = obs
                episodes.append(Episode(self.steps, self.episode_return, self.episode_length, self.physics_value))
                self.episode_return, self.episode_length = 0.0, 0
                raw, _ = self.env.reset()
                raw = np.asarray(raw, np.float64)
                obs = self._normalize(raw)
        self.obs, self.raw_obs = obs, raw
        buf.last_obs[:] = obs
        return episodes, raw_seen

    # -- save / restore (between rollouts) ----------------------------------------------------------

    def state_dict(self) -> dict:
        model, data = self.base.model, self.base.data
        sim = np.empty(mujoco.mj_stateSize(model, _STATE_SPEC))
        mujoco.mj_getState(model, data, sim, _STATE_SPEC)
        return {
            "sim": torch.from_numpy(sim),
            "xpos": torch.from_numpy(data.xpos.copy()),
            "env_rng": generator_state(self.base.np_random),
            "noise_rng": generator_state(self.noise_rng),
            "schedule": None if self.schedule is None else self.schedule.get_schedule_state(),
            "raw_obs": torch.from_numpy(self.raw_obs.copy()),
            "obs": torch.from_numpy(self.obs.copy()),
            "episode_return": float(self.episode_return), "episode_length": int(self.episode_length),
            "steps": int(self.steps),
            "obs_norm": None if self.obs_norm is None else self.obs_norm.state_dict(),
            "reward_scaler": None if self.reward_scaler is None else self.reward_scaler.state_dict(),
        }

    def load_state_dict(self, sd: dict) -> None:
        if (sd["schedule"] is None) != (self.schedule is None):
            raise ValueError("saved env state and this env disagree on having a physics schedule")
        if self.schedule is not None:
            self.schedule.set_schedule_state(sd["schedule"])  # applies the saved physics to the model
        model, data = self.base.model, self.base.data
        mujoco.mj_setState(model, data, sd["sim"].numpy(), _STATE_SPEC)
        # The next step reads the torso position left by the previous step's last mj_step
        # (computed before its final integration); a fresh forward pass would give another value.
        data.xpos[:] = sd["xpos"].numpy()
        set_generator_state(self.base.np_random, sd["env_rng"])
        set_generator_state(self.noise_rng, sd["noise_rng"])
        self.raw_obs = sd["raw_obs"].numpy().copy()
        self.obs = sd["obs"].numpy().copy()
        self.episode_return, self.episode_length = float(sd["episode_return"]), int(sd["episode_length"])
        self.steps = int(sd["steps"])
        if self.obs_norm is not None:
            self.obs_norm.load_state_dict(sd["obs_norm"])
        if self.reward_scaler is not None:
            self.reward_scaler.load_state_dict(sd["reward_scaler"])
