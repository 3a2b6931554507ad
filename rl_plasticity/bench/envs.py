"""Ant-v5 steps/s bare vs inside the friction-schedule wrapper, and the cost of a physics switch.

Both envs run the same random actions from the same seed, resetting at episode ends. The wrapped
env holds friction at 1.0 (Ant's own value) so it simulates the very same trajectory as the bare
one and any difference is the wrapper's. The two take turns block by block (a few thousand steps,
alternating which goes first), so a pair of blocks does the same physics under about the same load
from other processes: the overhead is the median over pairs of the time ratio. Steps/s are the best
of the repeats (each repeat runs --steps steps in each env). The wrapper's own code is also timed
alone, around a no-op simulator, which no load from other processes can blur.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=60_000,
                        help="env steps per measurement of each env (default 60000, about 10 s on one core)")
    parser.add_argument("--repeats", type=int, default=3, help="measurements of each env (default 3)")
    parser.add_argument("--block", type=int, default=2_000,
                        help="steps per turn; bare and wrapped alternate turns (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the envs and the random actions")


class _Runner:
    """One env stepping through a shared action sequence, a block at a time."""

    def __init__(self, env: Any, seed: int) -> None:
        self.env = env
        self.obs, _ = env.reset(seed=seed)

    def time_block(self, actions: Any) -> float:
        """Seconds to step through `actions`, resetting at episode ends."""
        step, reset = self.env.step, self.env.reset
        obs = self.obs
        start = time.perf_counter()
        for action in actions:
            obs, _, terminated, truncated, _ = step(action)
            if terminated or truncated:
                obs, _ = reset()
        elapsed = time.perf_counter() - start
        self.obs = obs
        return elapsed


def _switch_cost_us(apply: Any, values: list[float], repeats: int = 200) -> float:
    """Microseconds for one call of `apply(value)` (what a switch adds to its reset)."""
    start = time.perf_counter()
    for i in range(repeats):
        apply(values[i % len(values)])
    return (time.perf_counter() - start) / repeats * 1e6


def _wrapper_alone_us(env: Any, action: Any, repeats: int = 100_000) -> float:
    """Microseconds the wrapper's own step code takes, with the simulator swapped for a no-op.

    Immune to load from other processes, unlike the paired timings of whole steps.
    """
    from rl_plasticity.envs import NonstationaryPhysics

    wrapper = env
    while not isinstance(wrapper, NonstationaryPhysics):
        wrapper = wrapper.env
    real_env, saved = wrapper.env, wrapper.get_schedule_state()

    class _NoPhysics:
        def step(self, _action: Any) -> tuple:
            return None, 0.0, False, False, {}

    no_physics = _NoPhysics()
    try:
        wrapper.env = no_physics
        start = time.perf_counter()
        for _ in range(repeats):
            wrapper.step(action)
        wrapped = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(repeats):
            no_physics.step(action)
        bare = time.perf_counter() - start
    finally:
        wrapper.env = real_env
        wrapper.set_schedule_state(saved)  # the no-op steps were counted
    return (wrapped - bare) / repeats * 1e6


def run(args: argparse.Namespace) -> dict[str, Any]:
    import gymnasium as gym
    import numpy as np

    from rl_plasticity import envs
    from rl_plasticity.envs.physics import MassScaler, set_sliding_friction

    if min(args.steps, args.repeats, args.block) < 1:
        from rl_plasticity.errors import UserError
        raise UserError(f"--steps, --repeats and --block must be >= 1, "
                        f"got {args.steps}, {args.repeats}, {args.block}")

    bare = gym.make("Ant-v5")
    wrapped = gym.make(envs.FRICTION_ANT_ID, values=[1.0])
    space = bare.action_space
    actions = np.random.default_rng(args.seed).uniform(space.low, space.high, (args.steps, space.shape[0]))
    actions = actions.astype(space.dtype)

    print(f"Ant-v5, {args.repeats} x {args.steps} random-action steps per env, "
          f"in alternating blocks of {args.block}")
    rates: dict[str, list[float]] = {"bare": [], "wrapped": []}
    ratios: list[float] = []  # wrapped time / bare time, per pair of blocks
    same_trajectory = True
    for r in range(args.repeats):
        runners = {"bare": _Runner(bare, args.seed), "wrapped": _Runner(wrapped, args.seed)}
        totals = {"bare": 0.0, "wrapped": 0.0}
        for k, first in enumerate(range(0, args.steps, args.block)):
            block = actions[first:first + args.block]
            order = ("bare", "wrapped") if (r + k) % 2 == 0 else ("wrapped", "bare")
            seconds = {name: runners[name].time_block(block) for name in order}
            ratios.append(seconds["wrapped"] / seconds["bare"])
            for name in order:
                totals[name] += seconds[name]
        same_trajectory &= bool(np.array_equal(runners["bare"].obs, runners["wrapped"].obs))
        for name in ("bare", "wrapped"):
            rates[name].append(args.steps / totals[name])
        bare_rate, wrapped_rate = rates["bare"][-1], rates["wrapped"][-1]
        print(f"  run {r + 1}: bare {bare_rate:8.0f} steps/s   wrapped {wrapped_rate:8.0f} steps/s")

    best_bare, best_wrapped = max(rates["bare"]), max(rates["wrapped"])
    overhead = (statistics.median(ratios) - 1.0) * 100.0
    overhead_us = overhead / 100.0 / best_bare * 1e6
    best_vs_best = (best_bare / best_wrapped - 1.0) * 100.0
    alone_us = _wrapper_alone_us(wrapped, actions[0])
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
    print(f"wrapper overhead {overhead:+.2f}% = {overhead_us:+.2f} us/step (median of {len(ratios)} block pairs; "
          f"best vs best {best_vs_best:+.2f}%); target < 3%")
    print(f"wrapper code alone (simulator swapped for a no-op): {alone_us:.2f} us/step "
          f"= {alone_us * best_bare / 1e4:.2f}% of a bare step")
    print(f"same trajectory bare and wrapped: {same_trajectory}")
    print(f"switch cost: friction {friction_us:.1f} us, mass (with mj_setConst) {mass_us:.1f} us")
    return {
        "steps": args.steps,
        "repeats": args.repeats,
        "block": args.block,
        "bare_steps_per_s": round(best_bare, 1),
        "wrapped_steps_per_s": round(best_wrapped, 1),
        "overhead_percent": round(overhead, 2),
        "overhead_us_per_step": round(overhead_us, 2),
        "overhead_percent_best_vs_best": round(best_vs_best, 2),
        "block_pairs": len(ratios),
        "wrapper_alone_us_per_step": round(alone_us, 3),
        "bare_median_steps_per_s": round(statistics.median(rates["bare"]), 1),
        "wrapped_median_steps_per_s": round(statistics.median(rates["wrapped"]), 1),
        "same_trajectory": same_trajectory,
        "friction_switch_us": round(friction_us, 2),
        "mass_switch_us": round(mass_us, 2),
    }
