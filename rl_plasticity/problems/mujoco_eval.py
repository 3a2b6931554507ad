"""Running a PPO policy for whole episodes on a chosen physics: the loop behind `rl-plasticity
evaluate` and behind the optional evaluation at the end of each physics phase during training
(`PhaseEndEvaluation`, a callback of the run loop).

Episodes are repeatable: the env's first reset is seeded and the action noise (unless deterministic)
comes from a generator seeded the same way. Observations are normalised with the policy's saved
statistics, which evaluation never updates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from rl_plasticity.problems.mujoco_env import Physics, make_eval_env
from rl_plasticity.run.loop import Callback
from rl_plasticity.run.stats import mean_se
from rl_plasticity.run.video import caption

_EVAL_STREAM = 0xE7A1  # mixed into evaluation seeds during training, apart from training's streams


@dataclass
class Policy:
    """Maps raw observations to actions; the normaliser is read, never updated."""

    mean: object  # normalised float32 observation -> action mean (PPOAgent.policy_mean)
    std: np.ndarray
    obs_norm: object | None  # agents.normalize.ObsNormalizer or None
    bounds: tuple[np.ndarray, np.ndarray] | None  # (low, high) if actions are clipped, as in training

    @classmethod
    def of(cls, run) -> "Policy":
        """The policy of a PPORun, sending actions to the env as its training did (ppo.clip_actions)."""
        runner = run.runner
        return cls(mean=run.agent.policy_mean, std=run.agent.action_std(), obs_norm=runner.obs_norm,
                   bounds=(runner.low, runner.high) if runner.clip_actions else None)

    def act(self, raw_obs: np.ndarray, noise_rng: np.random.Generator | None) -> np.ndarray:
        """The action sent to the env: mean (+ std * N(0, 1) unless `noise_rng` is None), clipped to
        the action bounds if training clipped it."""
        raw = np.asarray(raw_obs, np.float64)
        obs = self.obs_norm(raw, update=False) if self.obs_norm is not None else raw
        action = self.mean(obs.astype(np.float32))
        if noise_rng is not None:
            action = action + self.std * noise_rng.standard_normal(len(self.std)).astype(np.float32)
        return action if self.bounds is None else np.clip(action, *self.bounds)


@dataclass
class Evaluation:
    physics: Physics | None
    returns: list[float]
    lengths: list[int]
    frames: list[np.ndarray] = field(default_factory=list)  # the first episode, if recorded
    fps: float = 20.0

    @property
    def return_mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def return_se(self) -> float:
        return standard_error(self.returns)

    @property
    def length_mean(self) -> float:
        return float(np.mean(self.lengths))

    @property
    def length_se(self) -> float:
        return standard_error(self.lengths)


def standard_error(values) -> float:
    """run.stats.mean_se's standard error, NaN (a float the CSV and plots take) for fewer than two values."""
    se = mean_se([float(v) for v in values])["se"]
    return math.nan if se is None else se


def run_episodes(policy: Policy, cfg: dict, target: Physics | None, episodes: int, seed: int,
                 deterministic: bool = False, video_size: int | None = None,
                 max_episode_steps: int | None = None) -> Evaluation:
    """`episodes` full episodes of `policy` on the run's env at `target`; the first is filmed if
    `video_size` is given (one frame after the reset and one after every step)."""
    env, limit = make_eval_env(cfg, target, render_size=video_size)
    limit = min(limit, max_episode_steps) if max_episode_steps else limit
    noise = None if deterministic else np.random.default_rng(seed)
    fps = float(env.unwrapped.metadata.get("render_fps") or 1.0 / env.unwrapped.dt)
    result = Evaluation(target, [], [], fps=fps)
    label = target.label() if target is not None else None
    try:
        raw, _ = env.reset(seed=seed)
        for episode in range(episodes):
            if episode:
                raw, _ = env.reset()
            film = video_size is not None and episode == 0
            total, length = 0.0, 0
            if film:
                result.frames.append(_frame(env, label, total, length))
            while True:
                raw, reward, terminated, truncated, _ = env.step(policy.act(raw, noise))
                total += float(reward)
                length += 1
                if film:
                    result.frames.append(_frame(env, label, total, length))
                if terminated or truncated or length >= limit:
                    break
            result.returns.append(total)
            result.lengths.append(length)
    finally:
        env.close()
    return result


def _frame(env, label: str | None, ret: float, length: int) -> np.ndarray:
    lines = ([label] if label else []) + [f"return {ret:.1f}", f"step {length}"]
    return caption(env.render(), lines)


def eval_seed(seed: int, phase: int) -> int:
    return int(np.random.SeedSequence([seed, _EVAL_STREAM, phase]).generate_state(1)[0])


class PhaseEndEvaluation(Callback):
    """Evaluates the current policy on the physics of each phase once it ends, and at the run's end.

    The runner switches physics at an episode end inside a rollout; the evaluation follows that
    rollout's update and uses the phase's own value; a stationary env has one phase, ended by the
    run's end. Logged at the current step: eval/return_mean, eval/return_se, eval/length_mean,
    eval/<friction|mass>, eval/phase and (with eval.video) eval/video.
    """

    def at_start(self, state, log) -> None:
        self.phase, self.value = state.phase(), state.runner.physics_value
        self.start_steps = state.steps  # a finished run resumed again has nothing new to evaluate

    def after_advance(self, state, log) -> None:
        phase = state.phase()
        if phase != self.phase:
            self._evaluate(state, log, self.phase, self.value)
        self.phase, self.value = phase, state.runner.physics_value

    def at_end(self, state, log) -> None:
        if state.steps > self.start_steps:
            self._evaluate(state, log, self.phase, state.runner.physics_value)

    @staticmethod
    def _evaluate(state, log, phase: int, value: float | None) -> None:
        e = state.cfg["eval"]
        kind = state.runner.physics_kind
        target = Physics(kind, value) if kind is not None and value is not None else None
        runner = state.runner
        policy = Policy.of(state)
        result = run_episodes(policy, state.cfg, target, e["episodes"], eval_seed(state.seed, phase),
                              deterministic=e["deterministic"], video_size=e["video_size"] if e["video"] else None,
                              max_episode_steps=runner.max_episode_steps)
        step = state.steps
        log.scalar("eval/return_mean", result.return_mean, step)
        log.scalar("eval/return_se", None if math.isnan(result.return_se) else result.return_se, step)
        log.scalar("eval/length_mean", result.length_mean, step)
        log.scalar("eval/phase", phase, step)
        if target is not None:
            log.scalar(f"eval/{target.name}", target.value, step)
        if result.frames:
            log.video("eval/video", result.frames, step, fps=result.fps)
