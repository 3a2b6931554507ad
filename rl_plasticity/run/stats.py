"""Statistics over seeds, as results files and printed summaries report them."""

from __future__ import annotations

import math

import torch


def mean_se(values: list[float]) -> dict:
    """Mean and standard error over seeds; `se` is None for one seed (there is no spread to measure)."""
    t = torch.tensor(values, dtype=torch.float64)
    se = float(t.std(unbiased=True) / math.sqrt(len(t))) if len(t) > 1 else None
    return {"mean": float(t.mean()), "se": se, "n": len(t)}


def format_mean_se(stat: dict, digits: int = 3) -> str:
    """`0.512 +- 0.013`, or `0.512 (n=1)` when one seed gives no standard error."""
    if stat["se"] is None or not math.isfinite(stat["se"]):
        return f"{stat['mean']:.{digits}f} (n={stat.get('n', 1)})"
    return f"{stat['mean']:.{digits}f} +- {stat['se']:.{digits}f}"
