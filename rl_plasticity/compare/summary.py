"""How `compare` summarises one bin's per-seed values (--stat): the numbers, the CSV columns that hold them and
the words the report and figure use for them.

- mean-se: mean +- 1 standard error (sample std / sqrt(n)), the toolkit's original summary.
- iqm-ci: interquartile mean with a 95% percentile-bootstrap interval, following Agarwal et al. (NeurIPS 2021,
  rliable); see run/stats.py for the IQM's trimming rule and why the bootstrap needs no strata here.
- mean-ci: mean with a 95% percentile-bootstrap interval, as in that paper's own figures.
One seed run gives no spread: its standard error or interval is NaN in the CSV and it has no band.
Departures from rliable: 2000 resamples by default (rliable draws 50,000; a figure here holds hundreds of
intervals, one per learner and bin) and one fixed seed per interval (options.BOOTSTRAP_SEED), so an interval
depends only on its bin's values.
"""

from __future__ import annotations

import math

import numpy as np

from rl_plasticity.compare.options import BOOTSTRAP_SAMPLES, BOOTSTRAP_SEED, STATISTICS
from rl_plasticity.run.stats import CI_LEVEL, bootstrap_ci, iqm

_CI = f"{CI_LEVEL:.0%} bootstrap CI"
_NAN = float("nan")


class SeedSummary:
    """One --stat choice: `summarise(values)` gives its CSV columns, `band(row)` the shaded interval."""

    def __init__(self, stat: str = "mean-se", bootstrap_samples: int = BOOTSTRAP_SAMPLES):
        if stat not in STATISTICS:
            raise ValueError(f"stat: expected one of {', '.join(STATISTICS)}, got {stat!r}")
        self.stat, self.bootstrap_samples = stat, bootstrap_samples
        self.center = "iqm" if stat == "iqm-ci" else "mean"
        self.columns = (self.center, "se") if stat == "mean-se" else (self.center, "ci95_low", "ci95_high")
        name = "IQM" if stat == "iqm-ci" else "mean"
        self.label = "mean +- standard error" if stat == "mean-se" else f"{name} [{_CI}]"
        self.spread = "standard error" if stat == "mean-se" else _CI
        if stat == "mean-se":
            self.description = "mean +- 1 standard error over seeds"
        else:
            what = "interquartile mean (middle 50% of seeds)" if stat == "iqm-ci" else "mean over seeds"
            self.description = (f"{what}; band: {CI_LEVEL:.0%} percentile-bootstrap CI "
                                f"({bootstrap_samples} resamples, seed {BOOTSTRAP_SEED})")
        self.legend_title = "line: mean, band: +-1 standard error" if stat == "mean-se" else \
            f"line: {name}, band: {_CI}"

    def summarise(self, values: np.ndarray) -> dict:
        """This statistic's columns for one bin, from one value per seed run."""
        if self.stat == "mean-se":
            se = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else _NAN
            return {"mean": float(values.mean()), "se": se}
        statistic = iqm if self.stat == "iqm-ci" else np.mean
        ci = bootstrap_ci(values, statistic, n_resamples=self.bootstrap_samples, seed=BOOTSTRAP_SEED)
        low, high = ci if ci else (_NAN, _NAN)
        return {self.center: float(statistic(values)), "ci95_low": low, "ci95_high": high}

    def band(self, row: dict) -> tuple[float, float]:
        """The shaded interval of a row; NaN (no band) where one seed run gives no spread."""
        if self.stat == "mean-se":
            return row["mean"] - row["se"], row["mean"] + row["se"]
        return row["ci95_low"], row["ci95_high"]

    def format(self, row: dict) -> str:
        """`0.512 +- 0.013`, `0.512 [0.48, 0.55]`, or the bare value where there is no spread."""
        low, high = self.band(row)
        value = f"{row[self.center]:.4g}"
        if math.isnan(low):
            return value
        return f"{value} +- {row['se']:.4g}" if self.stat == "mean-se" else f"{value} [{low:.4g}, {high:.4g}]"
