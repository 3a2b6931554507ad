"""Slowly-changing regression: example-steps/s for 1 seed and for many seeds batched in one process."""

from __future__ import annotations

import time
from pathlib import Path

from rl_plasticity.errors import UserError


def add_arguments(parser) -> None:
    parser.add_argument("--seeds", type=int, default=30, help="seeds batched in one process (default 30)")
    parser.add_argument("--examples", type=int, default=20_000, help="examples per seed per measurement")
    parser.add_argument("--learners", default="bp,cbp", help="comma-separated configs from configs/regression")


def _configs_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "configs" / "regression"


def measure(cfg: dict, seeds: int, examples: int) -> float:
    """Aggregate example-steps/s (examples x seeds per second) of training, excluding set-up."""
    from rl_plasticity.problems.regression import RegressionRun

    run = RegressionRun(cfg, list(range(seeds)))
    run.train_chunk()  # warm-up: first-call allocations
    chunks = max(1, examples // cfg["stream"]["change_every"])
    start = time.perf_counter()
    for _ in range(chunks):
        run.train_chunk()
    elapsed = time.perf_counter() - start
    return chunks * cfg["stream"]["change_every"] * seeds / elapsed


def run(args) -> dict:
    import torch

    from rl_plasticity.config import read_yaml
    from rl_plasticity.problems import resolve_config

    for option, value in (("--seeds", args.seeds), ("--examples", args.examples)):
        if value < 1:
            raise UserError(f"{option} must be >= 1, got {value}")
    torch.set_num_threads(1)
    figures = {}
    for learner in args.learners.split(","):
        cfg, _ = resolve_config(read_yaml(_configs_dir() / f"{learner}.yaml"), [])
        for seeds in (1, args.seeds):
            rate = measure(cfg, seeds, args.examples)
            figures[f"{learner}_{seeds}_seeds_examples_per_s"] = round(rate)
            print(f"{learner:>6} {seeds:>3} seed(s): {rate:>10,.0f} example-steps/s")
    return figures
