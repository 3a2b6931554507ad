"""PPO env-steps/s: ours vs Stable-Baselines3 with identical settings, and ours with CBP on vs off.

Settings shared by both (the paper's): one Ant-v5 env, 2048-step rollouts, 10 epochs x 16 minibatches
of 128, 256x256 ReLU actor and critic with LeCun-uniform init, Adam lr 1e-4 (eps 1e-8), no entropy bonus, GAE 0.99/0.95,
clip 0.2, value coefficient 1, no gradient clipping, one torch thread. The runs go one after the
other in this process; each time covers acting and learning, not building the model. Other load on
the machine slows all runs alike only if it is steady: compare ratios from one invocation.
"""

from __future__ import annotations

import argparse
import time
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=30_720,
                        help="env steps per run, rounded up to whole 2048-step rollouts (default 30720)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1,
                        help="measure each variant this many times, interleaved, and keep the best (default 1)")
    parser.add_argument("--skip-sb3", action="store_true", help="time only our PPO (CBP off and on)")


def _ours(steps: int, seed: int, learner: str = "std") -> float:
    """learner: "std" (SB3's settings), "cbp" (the paper's CBP learner), or "cbp_off" (the same
    optimizer with CBP disabled, the fair baseline for CBP's own cost)."""
    from rl_plasticity.config import validate
    from rl_plasticity.problems.ppo import DEFAULTS, PPORun

    cbp_optimizer = {"optimizer": {"betas": [0.99, 0.99], "weight_decay": 1e-4}}
    learner = {"std": {}, "cbp_off": cbp_optimizer,
               "cbp": {**cbp_optimizer, "cbp": {"enabled": True, "maturity_threshold": 10_000}}}[learner]
    cfg = validate({"env": {"id": "Ant-v5"}, "total_steps": steps, **learner}, DEFAULTS)
    run = PPORun(cfg, seed)
    start = time.perf_counter()
    while run.steps < steps:
        run.train_update()
    return run.steps / (time.perf_counter() - start)


def lecun_uniform_(module) -> None:
    """Give every Linear layer of an SB3 policy our init: U(+-sqrt(3/fan_in)), biases 0 (the paper's)."""
    import math

    import torch
    from torch import nn

    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Linear):
                bound = math.sqrt(3.0 / layer.in_features)
                layer.weight.uniform_(-bound, bound)
                layer.bias.zero_()


def sb3_model(seed: int):
    """SB3's PPO on one Ant-v5 env with exactly our settings (and our LeCun init)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from torch import nn

    env = make_vec_env("Ant-v5", n_envs=1, seed=seed)
    model = PPO("MlpPolicy", env, n_steps=2048, batch_size=128, n_epochs=10, learning_rate=1e-4, gamma=0.99,
                gae_lambda=0.95, clip_range=0.2, ent_coef=0.0, vf_coef=1.0, max_grad_norm=1e10,
                normalize_advantage=True, seed=seed, device="cpu", verbose=0,
                policy_kwargs={"net_arch": {"pi": [256, 256], "vf": [256, 256]}, "activation_fn": nn.ReLU,
                               "log_std_init": 0.0, "ortho_init": False, "optimizer_kwargs": {"eps": 1e-8}})
    lecun_uniform_(model.policy)
    return model


def _sb3(steps: int, seed: int) -> float:
    model = sb3_model(seed)
    start = time.perf_counter()
    model.learn(total_timesteps=steps)
    return model.num_timesteps / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from rl_plasticity.errors import UserError

    if args.steps < 1 or args.repeats < 1:
        raise UserError(f"--steps and --repeats must be >= 1, got {args.steps} and {args.repeats}")
    steps = -(-args.steps // 2048) * 2048
    torch.set_num_threads(1)
    variants = {"ours_sps": lambda: _ours(steps, args.seed, "std"),
                "sb3_sps": lambda: _sb3(steps, args.seed),
                "ours_cbp_off_sps": lambda: _ours(steps, args.seed, "cbp_off"),
                "ours_cbp_sps": lambda: _ours(steps, args.seed, "cbp")}
    labels = {"ours_sps": "ours (std)", "sb3_sps": "SB3 PPO", "ours_cbp_off_sps": "ours (CBP off)",
              "ours_cbp_sps": "ours (CBP on)"}
    if args.skip_sb3:
        del variants["sb3_sps"]
    best: dict[str, float] = {}
    for r in range(args.repeats):
        # Alternate the order between repeats so that a slow spell does not always hit the same variant.
        for name in (list(variants) if r % 2 == 0 else list(reversed(variants))):
            sps = variants[name]()
            best[name] = max(best.get(name, 0.0), sps)
            print(f"{labels[name]:16s} {sps:8.0f} env-steps/s")
    figures: dict[str, Any] = {"steps": steps, "repeats": args.repeats, **best}
    if "sb3_sps" in best:
        figures["speedup_vs_sb3"] = best["ours_sps"] / best["sb3_sps"]
        print(f"ours / SB3 = {figures['speedup_vs_sb3']:.2f}x")
    # Same optimizer settings on both sides: CBP's cost is CBP's alone.
    figures["cbp_cost"] = 1 - best["ours_cbp_sps"] / best["ours_cbp_off_sps"]
    print(f"CBP costs {100 * figures['cbp_cost']:.1f}% of the env-steps/s of the same learner without it")
    return figures
