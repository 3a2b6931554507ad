"""Independent random streams per seed: one torch.Generator for each (seed, purpose)."""

from __future__ import annotations

import numpy as np
import torch

PURPOSES = {"init": 0, "data": 1, "method": 2, "env": 3, "sample": 4}
MAX_SEEDS = 10_000  # more seeds in one command is a typo, not an experiment (and would not fit in memory)


def derive_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed for `purpose` that does not collide with other seeds or purposes."""
    return int(np.random.SeedSequence([seed, PURPOSES[purpose]]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def generators(seeds: list[int], purpose: str) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(derive_seed(s, purpose)) for s in seeds]
