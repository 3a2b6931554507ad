"""Ant-v5 steps/s bare vs inside the friction-schedule wrapper, and the cost of a physics switch.

Both envs run the same random actions from the same seed, resetting at episode ends. The wrapped
env holds friction at 1.0 (Ant's own value) so it simulates the very same trajectory as the bare
one and any difference is the wrapper's. Bare and wrapped runs alternate (ABBA order) over several
repeats; the best run of each is compared, which discounts noise from other processes.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=60_000,
                        help="env steps per measurement (default 60000, about 10 s on one core)")
    parser.add_argument("--repeats", type=int, default=3, help="measurements of each env, interleaved (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the envs and the random actions")


def _time_rollout(env: Any, actions: Any, seed: int) -> tuple[float, Any]:
    """Steps/s over `actions`, resetting at episode ends; also the last observation (to compare runs)."""
    obs, _ = env.reset(seed=seed)
    step, reset = env.step, env.reset
    start = time.perf_counter()
    for action in actions:
        obs, _, terminated, truncated, _ = step(action)
        if terminated or truncated:
            obs, _ = reset()
    elapsed = time.perf_counter() - start
    return len(actions) / elapsed, obs


def _switch_cost_us(apply: Any, values: list[float], repeats: int = 200) -> float:
    """Microseconds for one call of `apply(value)` (what a switch adds to its reset)."""
    start = time.perf_counter()
    for i in range(repeats):
        apply(values[i % len(values)])
    return (time.perf_counter() - start) / repeats * 1e6


def run(args: argparse.Namespace) -> dict[str, Any]:
    import gymnasium as gym
    import numpy as np

    import envs
    from envs.physics import MassScaler, set_sliding_friction

    if args.steps < 1 or args.repeats < 1:
        from rl_plasticity.errors import UserError
        raise UserError(f"--steps and --repeats must be >= 1, got {args.steps} and {args.repeats}")

    bare = gym.make("Ant-v5")
    wrapped = gym.make(envs.FRICTION_ANT_ID, values=[1.0])
    space = bare.action_space
    actions = np.random.default_rng(args.seed).uniform(space.low, space.high, (args.steps, space.shape[0]))
    actions = actions.astype(space.dtype)

    print(f"Ant-v5, {args.steps} random-action steps per run, {args.repeats} runs each, interleaved")
    rates: dict[str, list[float]] = {"bare": [], "wrapped": []}
    last_obs: dict[str, Any] = {}
    for r in range(args.repeats):
        order = ("bare", "wrapped") if r % 2 == 0 else ("wrapped", "bare")
        for name in order:
            rate, last_obs[name] = _time_rollout(bare if name == "bare" else wrapped, actions, args.seed)
            rates[name].append(rate)
            print(f"  run {r + 1}: {name:8s} {rate:8.0f} steps/s")
    same_trajectory = bool(np.array_equal(last_obs["bare"], last_obs["wrapped"]))

    best_bare, best_wrapped = max(rates["bare"]), max(rates["wrapped"])
    overhead = (best_bare / best_wrapped - 1.0) * 100.0
    overhead_us = (1.0 / best_wrapped - 1.0 / best_bare) * 1e6
    # Switch costs on a spare model, so the measured envs stay untouched.
    spare = gym.make("Ant-v5").unwrapped
    spare.reset(seed=args.seed)
    friction_us = _switch_cost_us(lambda f: set_sliding_friction(spare.model, f), [0.5, 1.0])
    scaler = MassScaler(spare.model)
    mass_us = _switch_cost_us(lambda s: scaler.apply(spare.model, spare.data, s), [0.8, 1.25])
    for env in (bare, wrapped, spare):
        env.close()

    print(f"bare     best {best_bare:8.0f} steps/s   median {statistics.median(rates['bare']):8.0f}")
    print(f"wrapped  best {best_wrapped:8.0f} steps/s   median {statistics.median(rates['wrapped']):8.0f}")
    print(f"wrapper overhead {overhead:+.2f}% = {overhead_us:+.2f} us/step (best vs best; target < 3%); "
          f"same trajectory: {same_trajectory}")
    print(f"switch cost: friction {friction_us:.1f} us, mass (with mj_setConst) {mass_us:.1f} us")
    return {
        "steps": args.steps,
        "repeats": args.repeats,
        "bare_steps_per_s": round(best_bare, 1),
        "wrapped_steps_per_s": round(best_wrapped, 1),
        "overhead_percent": round(overhead, 2),
        "overhead_us_per_step": round(overhead_us, 2),
        "bare_median_steps_per_s": round(statistics.median(rates["bare"]), 1),
        "wrapped_median_steps_per_s": round(statistics.median(rates["wrapped"]), 1),
        "same_trajectory": same_trajectory,
        "friction_switch_us": round(friction_us, 2),
        "mass_switch_us": round(mass_us, 2),
    }
