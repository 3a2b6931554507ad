"""Optional running normalisers for observations and rewards, with plain-data state for checkpoints.

They are kept across physics changes: the statistics describe everything seen so far.
"""

from __future__ import annotations

import numpy as np
import torch


class RunningMeanStd:
    """Mean and variance of a stream of vectors (Chan et al.'s parallel update, one sample at a time)."""

    def __init__(self, shape: tuple[int, ...]):
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        self.count = 1e-4  # as gymnasium's wrappers: avoids a division by zero at the start

    def update(self, x: np.ndarray) -> None:
        delta = x - self.mean
        total = self.count + 1
        self.mean = self.mean + delta / total
        self.var = (self.var * self.count + delta * delta * self.count / total) / total
        self.count = total

    def state_dict(self) -> dict:
        return {"mean": torch.from_numpy(np.array(self.mean, np.float64)),
                "var": torch.from_numpy(np.array(self.var, np.float64)),
                "count": float(self.count)}

    def load_state_dict(self, sd: dict) -> None:
        self.mean, self.var = sd["mean"].numpy().copy(), sd["var"].numpy().copy()
        self.count = float(sd["count"])


class ObsNormalizer:
    """(obs - mean) / std, clipped; statistics updated with every observation seen while acting."""

    def __init__(self, dim: int, clip: float, eps: float = 1e-8):
        self.stats, self.clip, self.eps = RunningMeanStd((dim,)), clip, eps

    def __call__(self, obs: np.ndarray, update: bool = True) -> np.ndarray:
        if update:
            self.stats.update(obs)
        return np.clip((obs - self.stats.mean) / np.sqrt(self.stats.var + self.eps), -self.clip, self.clip)

    def state_dict(self) -> dict:
        return self.stats.state_dict()

    def load_state_dict(self, sd: dict) -> None:
        self.stats.load_state_dict(sd)


class RewardScaler:
    """Divides rewards by the running std of the discounted return (as gymnasium's NormalizeReward)."""

    def __init__(self, gamma: float, clip: float, eps: float = 1e-8):
        self.stats, self.gamma, self.clip, self.eps = RunningMeanStd(()), gamma, clip, eps
        self.discounted = 0.0

    def __call__(self, reward: float, episode_ended: bool) -> float:
        self.discounted = self.discounted * self.gamma + reward
        self.stats.update(np.float64(self.discounted))  # a 0-d mean/var: kept as numpy scalars
        if episode_ended:
            self.discounted = 0.0
        return float(np.clip(reward / np.sqrt(self.stats.var + self.eps), -self.clip, self.clip))

    def state_dict(self) -> dict:
        return {**self.stats.state_dict(), "discounted": float(self.discounted)}

    def load_state_dict(self, sd: dict) -> None:
        self.stats.load_state_dict(sd)
        self.discounted = float(sd["discounted"])
