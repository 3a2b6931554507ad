"""SB3 PPO env-steps/s on the friction-changing Ant: with CBP (CBPPolicy) vs plain SB3 PPO.

All variants use the paper's PPO settings (one rl_plasticity/FrictionAnt-v0 env, 2048-step rollouts,
10 epochs x 16 minibatches of 128, 256x256 ReLU actor and critic, LeCun init, lr 1e-4, Adam betas
0.99/0.99, weight decay 1e-4, no entropy bonus, no gradient clipping, one torch thread) and differ only in:
- plain:      SB3's MlpPolicy with torch's Adam;
- exact Adam: MlpPolicy with rl_plasticity.Adam (exact per-unit reset), no CBP;
- CBP:        CBPPolicy: rl_plasticity.Adam + CBP in actor and critic after every minibatch step
              (rate 1e-4, decay 0.99, contribution utility; maturity --maturity, default 1,000 instead
              of the paper's 10,000 so that units are replaced within a short benchmark);
- CBP, torch Adam: CBPPolicy with torch's Adam (moments reset, step count not): CBP's own cost.
Each run covers acting and learning, not building the model. It is timed twice: wall clock
(env-steps/s) and the process's CPU time (env-steps per CPU-second), which a busy machine disturbs
far less since everything runs on one thread. Variants alternate between repeats; the best of each
is kept. Compare ratios from one invocation.
"""

from __future__ import annotations

import argparse
import time
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=20_480,
                        help="env steps per run, rounded up to whole 2048-step rollouts (default 20480)")
    parser.add_argument("--maturity", type=int, default=1_000, help="CBP maturity threshold (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1,
                        help="measure each variant this many times, interleaved, and keep the best (default 1)")


def _model(variant: str, seed: int, maturity: int):
    import gymnasium as gym
    import torch
    from stable_baselines3 import PPO
    from torch import nn

    from rl_plasticity import envs  # noqa: F401  (registers rl_plasticity/FrictionAnt-v0)
    from rl_plasticity.bench.ppo_speed import lecun_uniform_
    from rl_plasticity.integrations.optim import Adam
    from rl_plasticity.integrations.sb3 import CBPPolicy

    policy_kwargs: dict[str, Any] = {
        "net_arch": {"pi": [256, 256], "vf": [256, 256]}, "activation_fn": nn.ReLU, "log_std_init": 0.0,
        "ortho_init": False, "optimizer_kwargs": {"eps": 1e-8, "betas": (0.99, 0.99), "weight_decay": 1e-4},
        "optimizer_class": torch.optim.Adam if variant in ("plain", "cbp_torch_adam") else Adam}
    policy = "MlpPolicy"
    if variant.startswith("cbp"):
        policy = CBPPolicy
        policy_kwargs.update(cbp={"maturity_threshold": maturity}, plasticity_init="lecun")
    env = gym.make("rl_plasticity/FrictionAnt-v0")
    model = PPO(policy, env, n_steps=2048, batch_size=128, n_epochs=10, learning_rate=1e-4, gamma=0.99,
                gae_lambda=0.95, clip_range=0.2, ent_coef=0.0, vf_coef=1.0, max_grad_norm=1e10,
                normalize_advantage=True, seed=seed, device="cpu", verbose=0, policy_kwargs=policy_kwargs)
    lecun_uniform_(model.policy)
    return model


def _timed(variant: str, steps: int, seed: int, maturity: int) -> tuple[float, float, dict]:
    """(env-steps per wall second, env-steps per CPU second, the methods' counters)."""
    import warnings

    model = _model(variant, seed, maturity)
    wall, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch Adam's one warning about its step count
        model.learn(total_timesteps=steps)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    plasticity = getattr(model.policy, "plasticity", None)
    return model.num_timesteps / wall, model.num_timesteps / cpu, ({} if plasticity is None else plasticity.stats())


LABELS = {"plain": "SB3 PPO", "exact_adam": "SB3 PPO, exact Adam", "cbp": "SB3 PPO + CBP",
          "cbp_torch_adam": "SB3 PPO + CBP, torch Adam"}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from rl_plasticity.errors import UserError

    if args.steps < 1 or args.repeats < 1 or args.maturity < 0:
        raise UserError(f"--steps and --repeats must be >= 1 and --maturity >= 0, got {args.steps}, "
                        f"{args.repeats} and {args.maturity}")
    steps = -(-args.steps // 2048) * 2048
    torch.set_num_threads(1)
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    replacements = 0.0
    for r in range(args.repeats):
        # Alternate the order between repeats so that a slow spell does not always hit the same variant.
        for variant in (list(LABELS) if r % 2 == 0 else list(reversed(LABELS))):
            wall_sps, cpu_sps, stats = _timed(variant, steps, args.seed, args.maturity)
            wall[variant], cpu[variant] = max(wall.get(variant, 0.0), wall_sps), max(cpu.get(variant, 0.0), cpu_sps)
            replacements = max(replacements, sum(v for k, v in stats.items() if k.endswith("replacements")))
            print(f"{LABELS[variant]:26s} {wall_sps:7.0f} env-steps/s  {cpu_sps:7.0f} env-steps/CPU-s")
    figures: dict[str, Any] = {"steps": steps, "repeats": args.repeats, "maturity": args.maturity,
                               "cbp_replacements": replacements}
    for variant in LABELS:
        figures[f"{variant}_sps"], figures[f"{variant}_cpu_sps"] = wall[variant], cpu[variant]
        if variant != "plain":
            figures[f"{variant}_cost"] = 1 - wall[variant] / wall["plain"]
            figures[f"{variant}_cpu_cost"] = 1 - cpu[variant] / cpu["plain"]
    print(f"CBP replaced {replacements:.0f} units per run (actor and critic, all layers)")
    for variant in ("cbp", "cbp_torch_adam", "exact_adam"):
        print(f"{LABELS[variant]} costs {100 * figures[f'{variant}_cost']:.1f}% of plain SB3 PPO's env-steps/s "
              f"({100 * figures[f'{variant}_cpu_cost']:.1f}% of its env-steps per CPU-second)")
    return figures
