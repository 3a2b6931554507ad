"""Statistics over seeds, as results files, printed summaries and `compare` report them.

Mean and standard error, plus the two robust summaries of Agarwal et al., "Deep RL at the edge of the
statistical precipice" (NeurIPS 2021, the rliable library): the interquartile mean (IQM, the mean of
the middle 50% of runs, section 4.3) and percentile-bootstrap confidence intervals (section 4.1).
rliable's bootstrap is stratified by task; a summary here covers one metric (one task), so its single
stratum makes it the plain bootstrap over runs that `scipy.stats.bootstrap` does. Resampling is left
to scipy; a fixed seed makes every interval repeatable (same values, seed and scipy version).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import numpy as np
import torch

CI_LEVEL = 0.95


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


def iqm(values, axis: int = -1):
    """Interquartile mean: `scipy.stats.trim_mean(values, 0.25)`, as rliable computes it.

    floor(n / 4) values are cut from each end, so fewer than 4 values are not trimmed at all (plain mean)
    and 5 values keep their middle 3.
    """
    from scipy.stats import trim_mean  # scipy.stats takes about a second to import; only summaries need it

    return trim_mean(np.asarray(values, dtype=np.float64), 0.25, axis=axis)


def bootstrap_ci(values, statistic: Callable, *, n_resamples: int, seed: int,
                 level: float = CI_LEVEL) -> tuple[float, float] | None:
    """Percentile-bootstrap interval of `statistic(values, axis=-1)` over the values (one per run).

    None for fewer than two values: one run gives no spread to resample. Each call draws from its own
    generator seeded with `seed`, so an interval depends only on its own values, not on what else was
    summarised before it. The caller picks `seed` and `n_resamples` and should report them.
    """
    from scipy.stats import bootstrap  # see iqm

    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return None
    result = bootstrap((x,), statistic, n_resamples=n_resamples, confidence_level=level, method="percentile",
                       vectorized=True, axis=-1, **{_rng_keyword(): np.random.default_rng(seed)})
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _rng_keyword() -> str:
    """scipy >= 1.15 names the generator `rng`; older releases call it `random_state` (same draws either way)."""
    from scipy.stats import bootstrap  # see iqm

    return "rng" if "rng" in inspect.signature(bootstrap).parameters else "random_state"
