"""PPO env-steps/s: ours vs Stable-Baselines3 with identical settings, the paper configs, and CBP on vs off.

"ours (SB3 settings)" and SB3 share: one Ant-v5 env, actions clipped to the bounds, advantages
normalised per minibatch, 2048-step rollouts, 10 epochs x 16 minibatches of 128, 256x256 ReLU actor
and critic with LeCun-uniform init, Adam lr 1e-4 (eps 1e-8), no entropy bonus, GAE 0.99/0.95, clip
0.2, value coefficient 1, no gradient clipping, no plasticity metrics, one torch thread. The
"paper" variants run configs/friction_ant/{std,cbp}.yaml as `train` does (the official Ant-v3
observation padded to 111 entries, raw actions, metrics every 10,000 steps); CBP's cost compares
the CBP config with the same config with CBP disabled. The runs go one after the other in this
process; each time covers acting and learning, not building the model. Each variant reports
env-steps per second of wall-clock time and per CPU-second of this process (one thread): on a
shared, noisy machine the CPU-second figures are the steady ones, and the ratios use them.

Then, unless `--no-breakdown`, one more run of each paper config (std, CBP on) prints where an env step's time
goes: the simulator, acting, the update's forward, backward, optimizer and plasticity methods, metrics and
logging (rl_plasticity/bench/ppo_breakdown.py), so the next gap is visible.

`--methods NAME ...` times instead the paper's std config and the named configs/friction_ant learners (`all`:
every one but std) as `train` runs them, repeats interleaved, and prints each one's env-steps per CPU-second as a
ratio to std's: the median over repeats of the ratio within one repeat, where std ran next to it in the same
process. That is a method's cost on top of PPO (its optimizer settings and net options included, as in its
config). Ratios, not absolute rates, are the figures to compare across machines or a busy machine's spells.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=30_720,
                        help="env steps per run, rounded up to whole 2048-step rollouts (default 30720)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1,
                        help="measure each variant this many times, interleaved, and keep the best (default 1); "
                             "--methods' ratios are the median over repeats")
    parser.add_argument("--skip-sb3", action="store_true", help="time only our PPO (CBP off and on)")
    parser.add_argument("--no-breakdown", action="store_true",
                        help="skip the extra runs that print where a step's time goes (paper std and CBP configs)")
    parser.add_argument("--methods", nargs="+", metavar="NAME",
                        help="time the paper std config and these configs/friction_ant learners (or `all`) "
                             "instead, and print each one's speed as a ratio to std's")


PAPER_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "friction_ant"


def _ours_config(variant: str, steps: int) -> dict:
    """variant: "sb3_settings", "paper_std", "paper_cbp" or "paper_cbp_off" (the CBP config without CBP,
    the fair baseline for CBP's own cost)."""
    from rl_plasticity.config import load_config, validate
    from rl_plasticity.errors import UserError
    from rl_plasticity.problems.mujoco_ppo import DEFAULTS, RULES

    if variant == "sb3_settings":
        return validate({"env": {"id": "Ant-v5"}, "total_steps": steps,
                         "ppo": {"clip_actions": True, "advantage_normalization": "minibatch"}}, DEFAULTS)
    learner, cbp = {"paper_std": ("std", "false"), "paper_cbp": ("cbp", "true"), "paper_cbp_off": ("cbp", "false")}[variant]
    path = PAPER_CONFIGS / f"{learner}.yaml"
    if not path.is_file():
        raise UserError(f"bench ppo needs the repository's paper configs; {path} is missing")
    return load_config(path, [f"total_steps={steps}", f"cbp.enabled={cbp}"], DEFAULTS, RULES)


def _timed(work, steps: int) -> tuple[float, float]:
    """(env-steps per wall-clock second, per CPU-second of this process) of `work()`."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return steps / (time.perf_counter() - wall), steps / (time.process_time() - cpu)


def _ours(steps: int, seed: int, variant: str | dict) -> tuple[float, float]:
    """Time one variant of _ours_config, or a resolved config (timed as the paper variants are)."""
    from rl_plasticity.problems.mujoco_ppo import PPORun

    cfg = variant if isinstance(variant, dict) else _ours_config(variant, steps)
    run = PPORun(cfg, seed)
    every = cfg["log"]["metrics_every"] if variant != "sb3_settings" else None

    def train() -> None:
        while run.steps < steps:
            # Plasticity metrics at the same points as in `train` (SB3 has none to compare with).
            run.train_update(measure=every is not None and (run.steps + run.buffer.steps) // every != run.steps // every)

    return _timed(train, steps)


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


def _sb3(steps: int, seed: int) -> tuple[float, float]:
    model = sb3_model(seed)
    return _timed(lambda: model.learn(total_timesteps=steps), steps)


def method_names(requested: list[str]) -> list[str]:
    """The configs/friction_ant learners `--methods` names, in the order given (`all`: every one but std)."""
    from rl_plasticity.errors import UserError

    known = sorted(p.stem for p in PAPER_CONFIGS.glob("*.yaml") if p.stem != "std")
    names = known if requested == ["all"] else list(dict.fromkeys(requested))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"--methods: no config {', '.join(f'{n}.yaml' for n in unknown)} in {PAPER_CONFIGS}; "
                        f"known: {', '.join(known)} (or all)")
    return names


def _learner(name: str, steps: int, seed: int) -> tuple[float, float]:
    """Time configs/friction_ant/<name>.yaml as `train` runs it (checked like `train` checks it)."""
    from rl_plasticity.config import read_yaml
    from rl_plasticity.problems import resolve_config

    cfg, _ = resolve_config(read_yaml(PAPER_CONFIGS / f"{name}.yaml"), [f"total_steps={steps}"])
    return _ours(steps, seed, cfg)


def _method_costs(names: list[str], steps: int, seed: int, repeats: int) -> dict[str, Any]:
    """Best env-steps per wall- and CPU-second of std and each named learner, and each one's ratio to std: the
    median over repeats of the ratio within a repeat (std timed next to it, so a slow spell hits both)."""
    order = ["std", *names]
    best: dict[str, float] = {}
    cpu: dict[str, list[float]] = {name: [] for name in order}
    for r in range(repeats):
        for name in (order if r % 2 == 0 else order[::-1]):  # interleaved, the order alternating
            sps, cpu_sps = _learner(name, steps, seed)
            best[name] = max(best.get(name, 0.0), sps)
            cpu[name].append(cpu_sps)
            print(f"{name:22s} {sps:8.0f} env-steps/s  {cpu_sps:8.0f} env-steps/CPU-s")
    figures: dict[str, dict[str, Any]] = {}
    for name in order:
        figures[name] = {"sps": best[name], "cpu_sps": max(cpu[name])}
        if name == "std":
            continue
        ratios = [m / s for m, s in zip(cpu[name], cpu["std"])]
        figures[name].update(ratio_to_std=statistics.median(ratios), ratio_range=[min(ratios), max(ratios)])
        print(f"{name:22s} {figures[name]['ratio_to_std']:6.3f}x the paper std's env-steps per CPU-second "
              f"({100 * (1 - figures[name]['ratio_to_std']):+.1f}% cost; median of {repeats}, "
              f"range {min(ratios):.3f}-{max(ratios):.3f})")
    return {"steps": steps, "repeats": repeats, "methods": figures}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from rl_plasticity.errors import UserError

    if args.steps < 1 or args.repeats < 1:
        raise UserError(f"--steps and --repeats must be >= 1, got {args.steps} and {args.repeats}")
    steps = -(-args.steps // 2048) * 2048
    torch.set_num_threads(1)
    if args.methods:
        return _method_costs(method_names(args.methods), steps, args.seed, args.repeats)
    variants = {"ours_sps": lambda: _ours(steps, args.seed, "sb3_settings"),
                "sb3_sps": lambda: _sb3(steps, args.seed),
                "ours_paper_std_sps": lambda: _ours(steps, args.seed, "paper_std"),
                "ours_cbp_off_sps": lambda: _ours(steps, args.seed, "paper_cbp_off"),
                "ours_cbp_sps": lambda: _ours(steps, args.seed, "paper_cbp")}
    labels = {"ours_sps": "ours (SB3 settings)", "sb3_sps": "SB3 PPO", "ours_paper_std_sps": "ours (paper std)",
              "ours_cbp_off_sps": "ours (paper CBP off)", "ours_cbp_sps": "ours (paper CBP on)"}
    if args.skip_sb3:
        del variants["sb3_sps"]
    best: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for r in range(args.repeats):
        # Alternate the order between repeats so that a slow spell does not always hit the same variant.
        for name in (list(variants) if r % 2 == 0 else list(reversed(variants))):
            sps, cpu_sps = variants[name]()
            best[name], cpu[name] = max(best.get(name, 0.0), sps), max(cpu.get(name, 0.0), cpu_sps)
            print(f"{labels[name]:22s} {sps:8.0f} env-steps/s  {cpu_sps:8.0f} env-steps/CPU-s")
    figures: dict[str, Any] = {"steps": steps, "repeats": args.repeats, **best,
                               **{name.replace("_sps", "_cpu_sps"): v for name, v in cpu.items()}}
    if "sb3_sps" in best:
        figures["speedup_vs_sb3"] = cpu["ours_sps"] / cpu["sb3_sps"]
        figures["paper_std_vs_sb3"] = cpu["ours_paper_std_sps"] / cpu["sb3_sps"]
        print(f"ours / SB3 = {figures['speedup_vs_sb3']:.2f}x with identical settings; "
              f"{figures['paper_std_vs_sb3']:.2f}x for the paper's std config (per CPU-second)")
    # Same optimizer settings on both sides: CBP's cost is CBP's alone.
    figures["cbp_cost"] = 1 - cpu["ours_cbp_sps"] / cpu["ours_cbp_off_sps"]
    print(f"CBP costs {100 * figures['cbp_cost']:.1f}% of the env-steps per CPU-second of the same learner without it")
    if not args.no_breakdown:
        from rl_plasticity.bench.ppo_breakdown import breakdown, print_breakdown

        figures["breakdown_us_per_step"] = {}
        for variant, label in (("paper_std", labels["ours_paper_std_sps"]), ("paper_cbp", labels["ours_cbp_sps"])):
            parts = breakdown(_ours_config(variant, steps), args.seed, steps)
            print_breakdown(label, parts)
            figures["breakdown_us_per_step"][variant] = parts
    return figures
