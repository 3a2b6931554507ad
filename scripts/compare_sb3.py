"""Learning check: our PPO vs Stable-Baselines3's PPO on Ant-v5 with identical settings.

Both learn with the paper's PPO settings (see rl_plasticity/bench/ppo.py for the list) from the
same seeds; the script reports the mean episodic return over each run's last episodes (mean and
standard error over seeds), the env-steps/s of each, and writes docs/compare_sb3.{md,json,png}.

    python scripts/compare_sb3.py --steps 1000000 --seeds 3     # a real check: hours on 2 cores
    python scripts/compare_sb3.py --steps 20480 --seeds 1       # smoke: about a minute
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

DOCS = Path(__file__).resolve().parents[1] / "docs"
CAVEAT = ("Too short to judge learning: in the first ~100k steps of Ant the return is mostly the control "
          "cost times the episode length, so it says more about how soon episodes end than about walking. "
          "Use it as a smoke check; judge parity from runs of 1M+ steps.")


def run_ours(steps: int, seed: int) -> tuple[list[tuple[int, float]], float]:
    from rl_plasticity.config import validate
    from rl_plasticity.problems.ppo import DEFAULTS, PPORun

    run = PPORun(validate({"env": {"id": "Ant-v5"}, "total_steps": steps}, DEFAULTS), seed)
    curve: list[tuple[int, float]] = []
    start = time.perf_counter()
    while run.steps < steps:
        episodes, _ = run.train_update()
        curve += [(e.step, e.ret) for e in episodes]
    return curve, run.steps / (time.perf_counter() - start)


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


def run_sb3(steps: int, seed: int) -> tuple[list[tuple[int, float]], float]:
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from torch import nn

    class Episodes(BaseCallback):
        def __init__(self):
            super().__init__()
            self.curve: list[tuple[int, float]] = []

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "episode" in info:
                    self.curve.append((self.num_timesteps, float(info["episode"]["r"])))
            return True

    model = PPO("MlpPolicy", make_vec_env("Ant-v5", n_envs=1, seed=seed), n_steps=2048, batch_size=128,
                n_epochs=10, learning_rate=1e-4, gamma=0.99, gae_lambda=0.95, clip_range=0.2, ent_coef=0.0,
                vf_coef=1.0, max_grad_norm=1e10, seed=seed, device="cpu", verbose=0,
                policy_kwargs={"net_arch": {"pi": [256, 256], "vf": [256, 256]}, "activation_fn": nn.ReLU,
                               "log_std_init": 0.0, "ortho_init": False, "optimizer_kwargs": {"eps": 1e-8}})
    callback = Episodes()
    lecun_uniform_(model.policy)
    start = time.perf_counter()
    model.learn(total_timesteps=steps, callback=callback)
    return callback.curve, model.num_timesteps / (time.perf_counter() - start)


def mean_se(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, float)
    return float(a.mean()), float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1_000_000, help="env steps per run")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--last", type=int, default=20, help="episodes averaged at the end of each run")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict[str, dict] = {}
    for name, fn in (("ours", run_ours), ("sb3", run_sb3)):
        curves, speeds = [], []
        for seed in range(args.seeds):
            curve, sps = fn(args.steps, seed)
            curves.append(curve)
            speeds.append(sps)
            print(f"{name} seed {seed}: {len(curve)} episodes, {sps:.0f} env-steps/s", flush=True)
        finals = [float(np.mean([r for _, r in c[-args.last:]])) if c else float("nan") for c in curves]
        results[name] = {"final_return": mean_se(finals), "sps": mean_se(speeds), "curves": curves}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare_sb3.json").write_text(json.dumps({"steps": args.steps, "seeds": args.seeds, **results}))
    lines = [f"# Our PPO vs SB3 PPO on Ant-v5 (identical settings)\n",
             f"`python scripts/compare_sb3.py --steps {args.steps} --seeds {args.seeds}`: "
             f"{args.steps:,} env steps per run, {args.seeds} seed(s), return = mean of each run's last "
             f"{args.last} episodes, mean +- standard error over seeds.\n",
             "| PPO | final return | env-steps/s |", "|---|---|---|"]
    for name, r in results.items():
        (m, se), (s, sse) = r["final_return"], r["sps"]
        lines.append(f"| {name} | {m:.1f} +- {se:.1f} | {s:.0f} +- {sse:.0f} |")
    if args.steps < 500_000:
        lines.append(f"\n{CAVEAT}")
    (args.out / "compare_sb3.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for name, r in results.items():
            for i, c in enumerate(r["curves"]):
                if c:
                    x, y = zip(*c)
                    ax.plot(x, y, color="C0" if name == "ours" else "C1", alpha=0.6, label=name if i == 0 else None)
        ax.set_xlabel("env steps")
        ax.set_ylabel("episodic return")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.out / "compare_sb3.png", dpi=100)
    except ImportError:
        pass
    print("\n".join(lines))


if __name__ == "__main__":
    main()
