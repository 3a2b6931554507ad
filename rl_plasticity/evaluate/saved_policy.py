"""A trained PPO policy read back from a checkpoint: actor weights, action noise and the observation
normaliser's statistics as they were saved, frozen for evaluation.

The policy is rebuilt through `PPORun.load_state_dict`, the same code that resumes training, so the
checkpoint layout is read in one place; nothing is written and no run directory is touched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rl_plasticity.errors import UserError
from rl_plasticity.problems import resolve_config
from rl_plasticity.problems.mujoco_eval import Policy
from rl_plasticity.problems.mujoco_ppo import PPORun, config_differences
from rl_plasticity.run.checkpoint import CHECKPOINT_DIR, latest_checkpoint, load_checkpoint
from rl_plasticity.run.rundir import CONFIG_FILE, read_run_info


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


def _newest(path: str | Path) -> tuple[Path, Path, dict]:
    """(checkpoint, run directory, its state). A live run deletes old checkpoints as it saves new ones:
    if the newest one goes before it is read, the one that replaced it is read instead."""
    for _ in range(100):
        ckpt, run_dir = locate(path)
        try:
            return ckpt, run_dir, load_checkpoint(ckpt)
        except UserError:
            if not (Path(path).is_dir() and not ckpt.exists()):
                raise
    raise UserError(f"{path}: its newest checkpoint keeps being replaced before it can be read")


def load_policy(path: str | Path) -> SavedPolicy:
    """Read the policy of a run directory or checkpoint file; any mismatch is a UserError."""
    ckpt, run_dir = locate(path)
    raw_cfg, _ = read_run_info(run_dir)
    if raw_cfg.get("problem") != "ppo":
        raise UserError(f"evaluate works on PPO runs; {run_dir} is a {raw_cfg.get('problem')!r} run")
    cfg, _ = resolve_config(raw_cfg, [])
    ckpt, run_dir, sd = _newest(path)
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
