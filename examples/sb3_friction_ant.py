"""Stable-Baselines3's PPO with continual backprop on the slippery Ant, plasticity metrics in TensorBoard.

    MUJOCO_GL=egl python examples/sb3_friction_ant.py --steps 2000000 --logdir runs/sb3_friction_ant
    tensorboard --logdir runs/sb3_friction_ant

The task and the learner come from the toolkit's paper config, configs/friction_ant/cbp.yaml (Dohare et al.,
Nature 2024: PPO on Ant whose friction is redrawn log-uniform in [0.02, 2.0], with the official runs' Ant-v3
observation and reward, built by rl_plasticity/problems/mujoco_env.py), with the friction changing every
`--change-every` steps. SB3's PPO takes the paper's PPO settings where SB3 has them (256x256 ReLU actor and
critic, lr 1e-4, 2048-step rollouts, 10 epochs of minibatches of 128, GAE 0.99 / 0.95, clip 0.2, value
coefficient 1, no entropy bonus, no gradient clipping; SB3 keeps its own orthogonal init, action clipping and
per-minibatch advantage normalisation), the config's Adam (betas, L2) and its CBP section (rate 1e-4, maturity
10,000, contribution utility). `PlasticityMetricsCallback` logs the actor's and critic's plasticity metrics every
`--metrics-every` steps under plasticity/<net>/<layer>/<metric>, beside SB3's own rollout/ and train/ charts.
The small defaults run in about a minute.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "friction_ant" / "cbp.yaml"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20_000, help="env steps to train (the paper: 20,000,000)")
    p.add_argument("--change-every", type=int, default=10_000, help="env steps per friction (the paper: 2,000,000)")
    p.add_argument("--metrics-every", type=int, default=4_096, help="env steps between plasticity measurements")
    p.add_argument("--rollout-steps", type=int, default=2048, help="PPO rollout length (the paper: 2048)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--logdir", default="runs/sb3_friction_ant", help="TensorBoard directory")
    args = p.parse_args(argv)
    for name in ("steps", "change_every", "metrics_every", "rollout_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.rollout_steps % 128:
        p.error(f"--rollout-steps must be a multiple of the minibatch size 128, got {args.rollout_steps}")
    return args


def make_env(change_every: int):
    """The paper config's env (configs/friction_ant/cbp.yaml) with a time limit, as SB3 needs one."""
    from gymnasium.wrappers import TimeLimit

    from rl_plasticity.config import read_yaml
    from rl_plasticity.problems import resolve_config
    from rl_plasticity.problems.mujoco_env import make_env as make_config_env

    cfg, _ = resolve_config(read_yaml(CONFIG), [f"env.change_every={change_every}"])
    env, limit = make_config_env(cfg)
    return TimeLimit(env, limit), cfg


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from stable_baselines3 import PPO

    from rl_plasticity import PlasticityMetricsCallback, PlasticityPolicy

    torch.set_num_threads(1)  # one env and small nets: more threads only add overhead
    env, cfg = make_env(args.change_every)
    opt = cfg["optimizer"]
    model = PPO(PlasticityPolicy, env, learning_rate=opt["lr"], n_steps=args.rollout_steps, batch_size=128,
                n_epochs=10, gamma=0.99, gae_lambda=0.95, clip_range=0.2, ent_coef=0.0, vf_coef=1.0,
                max_grad_norm=float("inf"), seed=args.seed, device="cpu", tensorboard_log=args.logdir,
                policy_kwargs={"net_arch": {"pi": [256, 256], "vf": [256, 256]}, "activation_fn": torch.nn.ReLU,
                               "optimizer_kwargs": {"betas": tuple(opt["betas"]), "eps": opt["eps"],
                                                    "weight_decay": opt["weight_decay"]},
                               "cbp": {k: v for k, v in cfg["cbp"].items() if k != "enabled"},
                               "plasticity_seed": args.seed})
    model.learn(args.steps, callback=PlasticityMetricsCallback(every=args.metrics_every), tb_log_name="ppo_cbp")
    print(f"done: {args.steps} steps; TensorBoard: tensorboard --logdir {args.logdir}")
    print(model.policy.plasticity_stats())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
