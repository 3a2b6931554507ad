"""A trained PPO policy read back from a checkpoint: actor weights, action noise and the observation
normaliser's statistics as they were saved, frozen for evaluation.

The policy is rebuilt through `PPORun.load_state_dict`, the same code that resumes training, so the
checkpoint layout is read in one place; nothing is written and no run directory is touched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rl_plasticity.checkpoint import CHECKPOINT_DIR, latest_checkpoint, load_checkpoint
from rl_plasticity.errors import UserError
from rl_plasticity.rundir import CONFIG_FILE, read_run_info


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
class SavedPolicy:
    policy: Policy
    cfg: dict  # the run's resolved config
    seed: int
    step: int  # env steps trained when the checkpoint was taken
    checkpoint: Path
    run_dir: Path
    physics_value: float | None  # the physics in force at the checkpoint (non-stationary envs)


def locate(path: str | Path) -> tuple[Path, Path]:
    """(checkpoint file, run directory) for a run directory (its latest checkpoint) or a .pt file.

    A checkpoint's run directory is two levels up (RUN_DIR/checkpoints/ckpt-N.pt); its config.yaml
    says how the policy was built.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"no such run directory or checkpoint: {path}")
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise UserError(f"not a run directory (no {CONFIG_FILE}): {path}")
        ckpt = latest_checkpoint(path)
        if ckpt is None:
            raise UserError(f"run directory {path} has no checkpoints yet (looked in {path / CHECKPOINT_DIR})")
        return ckpt, path
    run_dir = path.resolve().parent.parent
    if not (run_dir / CONFIG_FILE).is_file():
        raise UserError(f"cannot find the run's {CONFIG_FILE} for checkpoint {path}: expected it at "
                        f"{run_dir / CONFIG_FILE} (checkpoints live in RUN_DIR/{CHECKPOINT_DIR}/)")
    return path, run_dir


def load_policy(path: str | Path) -> SavedPolicy:
    """Read the policy of a run directory or checkpoint file; any mismatch is a UserError."""
    from rl_plasticity.problems.ppo import PPORun, config_differences
    from rl_plasticity.train import resolve_config

    ckpt, run_dir = locate(path)
    raw_cfg, _ = read_run_info(run_dir)
    if raw_cfg.get("problem") != "ppo":
        raise UserError(f"evaluate works on PPO runs; {run_dir} is a {raw_cfg.get('problem')!r} run")
    cfg, _ = resolve_config(raw_cfg, [])
    sd = load_checkpoint(ckpt)
    try:
        saved_cfg = json.loads(sd["config"])
        seed = int(sd["seed"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"checkpoint {ckpt} is not a PPO checkpoint (no config or seed in it)") from None
    differing = config_differences(saved_cfg, cfg)
    if differing:
        raise UserError(f"checkpoint {ckpt} does not match {run_dir / CONFIG_FILE} "
                        f"(keys {', '.join(differing[:5])} differ); it belongs to another run")
    run = PPORun(cfg, seed)
    try:
        run.load_state_dict(sd, source=f"checkpoint {ckpt}")
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"checkpoint {ckpt} cannot be loaded into its run's PPO agent: {e}") from None
    runner = run.runner
    policy = Policy.of(run)
    physics_value = runner.physics_value
    run.runner.env.close()
    return SavedPolicy(policy, cfg, seed, runner.steps, ckpt, run_dir, physics_value)
