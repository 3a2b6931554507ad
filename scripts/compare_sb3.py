"""Learning check: our PPO vs Stable-Baselines3's PPO on Ant-v5, both with SB3's action handling.

Both sides run the same settings, `bench ppo`'s "SB3 settings" (rl_plasticity/bench/ppo_speed.py lists
them): Ant-v5's default observation and reward, the sampled action clipped to [-1, 1] before
env.step (SB3 always clips; ours is built with ppo.clip_actions: true) and advantages normalised per
minibatch (SB3's normalize_advantage; ours ppo.advantage_normalization: minibatch). These are NOT the
paper configs, which send the raw sample and normalise over the whole rollout (docs/fidelity.md).
Runs from the same seeds; the script reports the mean episodic return over each run's last episodes
(mean and standard error over seeds), the env-steps/s of each, and writes docs/compare_sb3.{md,json,png}.

    python scripts/compare_sb3.py run --impl ours --seed 0 --steps 2000000   # one run; run several at once
    python scripts/compare_sb3.py run --impl sb3 --seed 0 --steps 2000000
    python scripts/compare_sb3.py report                                      # merge into docs/
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


def run_sb3(steps: int, seed: int, on_progress=None):
    from stable_baselines3.common.callbacks import BaseCallback

    from rl_plasticity.bench.ppo_speed import sb3_model

    class Episodes(BaseCallback):
        def __init__(self):
            super().__init__()
            self.curve: list[tuple[int, float]] = []

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "episode" in info:
                    self.curve.append((self.num_timesteps, float(info["episode"]["r"])))
            if on_progress is not None and self.num_timesteps % 2048 == 0:
                on_progress(self.num_timesteps, self.curve)
            return True

    model = sb3_model(seed)
    callback = Episodes()
    start = time.perf_counter()
    model.learn(total_timesteps=steps, callback=callback)
    return callback.curve, model.num_timesteps / (time.perf_counter() - start), model


def forward_velocity(act, seed: int, episodes: int = 5) -> float:
    """Mean x-velocity of the trained policy (stochastic, as in training) over a few fresh episodes."""
    import gymnasium as gym

    env = gym.make("Ant-v5")
    velocities = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=10_000 + 100 * seed + episode)
        done = False
        while not done:
            obs, _, terminated, truncated, info = env.step(np.clip(act(obs), -1.0, 1.0))  # as both trained
            velocities.append(float(info["x_velocity"]))
            done = terminated or truncated
    return float(np.mean(velocities))


def run_job(impl: str, steps: int, seed: int, out: Path) -> None:
    """One (implementation, seed) run; writes out/<impl>_seed<k>.json, also every ~100k steps on the way
    (with "done": false) so a long run that is cut short still reports how far it got. Jobs can run in
    parallel."""
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{impl}_seed{seed}.json"
    start = time.perf_counter()
    last_write = [0]

    def save(reached: int, curve, done: bool, velocity: float | None = None) -> None:
        if done or reached - last_write[0] >= 100_000:
            last_write[0] = reached
            path.write_text(json.dumps({"impl": impl, "seed": seed, "steps": steps, "reached": reached,
                                        "done": done, "sps": reached / (time.perf_counter() - start),
                                        "forward_velocity": velocity, "curve": curve}))

    if impl == "ours":
        from rl_plasticity.bench.ppo_speed import _ours_config
        from rl_plasticity.problems.mujoco_ppo import PPORun

        # SB3's handling, as when docs/compare_sb3.* were made: the sample clipped to [-1, 1] before
        # env.step (SB3 clips in collect_rollouts) and advantages normalised per minibatch.
        cfg = _ours_config("sb3_settings", steps)
        assert cfg["ppo"]["clip_actions"] and cfg["ppo"]["advantage_normalization"] == "minibatch"
        run = PPORun(cfg, seed)
        curve: list[tuple[int, float]] = []
        while run.steps < steps:
            episodes, _, _ = run.train_update()
            curve += [(e.step, e.ret) for e in episodes]
            save(run.steps, curve, done=False)
        from rl_plasticity.problems.mujoco_eval import Policy

        rng = np.random.default_rng(seed)
        policy = Policy.of(run)  # acts as training did: stochastic, clipped (clip_actions is on)
        velocity = forward_velocity(lambda o: policy.act(o, rng), seed)
        save(run.steps, curve, done=True, velocity=velocity)
    else:
        curve, _, model = run_sb3(steps, seed, on_progress=lambda n, c: save(n, c, done=False))
        velocity = forward_velocity(lambda o: model.predict(o, deterministic=False)[0], seed)
        save(steps, curve, done=True, velocity=velocity)
    print(f"{impl} seed {seed}: {len(curve)} episodes, forward velocity {velocity:.2f}")


def mean_se(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, float)
    if len(a) == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else float("nan")


def binned(curve: list[tuple[int, float]], steps: int, width: int) -> np.ndarray:
    """Mean return of the episodes ending in each `width`-step bin (NaN where none ended)."""
    edges = np.arange(0, steps + width, width)
    x = np.array([s for s, _ in curve])
    y = np.array([r for _, r in curve])
    return np.array([y[(x > a) & (x <= b)].mean() if ((x > a) & (x <= b)).any() else np.nan
                     for a, b in zip(edges[:-1], edges[1:])])


def report(job_dir: Path, out: Path, last: int) -> None:
    jobs = [json.loads(p.read_text()) for p in sorted(job_dir.glob("*_seed*.json"))]
    if not jobs:
        raise SystemExit(f"no job results in {job_dir}")
    steps = min(j["reached"] for j in jobs)  # compare over the steps every run has reached
    partial = [f"{j['impl']} seed {j['seed']}" for j in jobs if not j["done"]]
    seeds = sorted({j["seed"] for j in jobs})
    results: dict[str, dict] = {}
    for impl in ("ours", "sb3"):
        mine = [j for j in jobs if j["impl"] == impl]
        finals = [float(np.mean([r for s, r in j["curve"] if s <= steps][-last:])) for j in mine]
        results[impl] = {"final_return": mean_se(finals), "sps": mean_se([j["sps"] for j in mine]),
                         "forward_velocity": mean_se([j["forward_velocity"] for j in mine if j["done"]]),
                         "runs": len(mine)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare_sb3.json").write_text(json.dumps({"steps": steps, "seeds": seeds, **results}, indent=1))
    lines = ["# Our PPO vs SB3 PPO on Ant-v5 (identical settings: SB3's action handling)\n",
             ("Both sides clip the sampled action to [-1, 1] before env.step and normalise advantages per minibatch, on "
             "Ant-v5's default observation and reward (ours: ppo.clip_actions true, ppo.advantage_normalization "
             "minibatch); these are not the paper configs, which send the raw action (docs/fidelity.md). "
             f"{steps:,} env steps per run, seeds {seeds}; final return = mean of each run's last {last} training "
             "episodes; forward velocity = mean x-velocity of the trained (stochastic) policy over 5 fresh "
             "episodes; mean +- standard error over seeds. Made by:\n"),
             "```",
             *[f"python scripts/compare_sb3.py run --impl {i} --seed {s} --steps {jobs[0]['steps']}" for i in ("ours", "sb3")
               for s in seeds],
             "python scripts/compare_sb3.py report",
             "```\n",
             "| PPO | final return | forward velocity | env-steps/s |", "|---|---|---|---|"]
    for name, r in results.items():
        (m, se), (v, vse), (s, sse) = r["final_return"], r["forward_velocity"], r["sps"]
        lines.append(f"| {name} | {m:.1f} +- {se:.1f} | {v:.2f} +- {vse:.2f} | {s:.0f} +- {sse:.0f} |")
    if partial:
        lines.append(f"\nRuns not finished when this report was made ({', '.join(partial)}): numbers are over the "
                     f"first {steps:,} steps; their forward velocity is left out.")
    if steps < 500_000:
        lines.append(f"\n{CAVEAT}")
    (out / "compare_sb3.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = max(steps // 40, 2048)
    fig, ax = plt.subplots(figsize=(7, 4))
    for color, impl in (("C0", "ours"), ("C1", "sb3")):
        curves = np.stack([binned([c for c in j["curve"] if c[0] <= steps], steps, width)
                           for j in jobs if j["impl"] == impl])
        mean = np.nanmean(curves, 0)
        se = np.nanstd(curves, 0, ddof=1) / np.sqrt(np.sum(~np.isnan(curves), 0)) if len(curves) > 1 else 0 * mean
        x = (np.arange(len(mean)) + 1) * width
        ax.plot(x, mean, color=color, label=f"{impl} ({len(curves)} seeds)")
        ax.fill_between(x, mean - se, mean + se, color=color, alpha=0.25)
    ax.set_xlabel("env steps")
    ax.set_ylabel("training episode return")
    ax.set_title("PPO on Ant-v5, SB3's settings (clipped actions): mean +- standard error")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "compare_sb3.png", dpi=110)
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="one (implementation, seed) run")
    r.add_argument("--impl", choices=("ours", "sb3"), required=True)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--steps", type=int, default=2_000_000, help="env steps per run")
    r.add_argument("--jobs", type=Path, default=DOCS / "compare_sb3_runs")
    p = sub.add_parser("report", help="merge the runs into docs/compare_sb3.{md,json,png}")
    p.add_argument("--jobs", type=Path, default=DOCS / "compare_sb3_runs")
    p.add_argument("--last", type=int, default=20, help="episodes averaged at the end of each run")
    p.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    if args.command == "run":
        run_job(args.impl, args.steps, args.seed, args.jobs)
    else:
        report(args.jobs, args.out, args.last)


if __name__ == "__main__":
    main()
