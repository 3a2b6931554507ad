"""`compare`'s --stat and --bootstrap-samples options. Only argparse here: the CLI adds them while it builds
its parser, before any command runs, so importing this module must stay cheap."""

from __future__ import annotations

import argparse

STATISTICS = ("mean-se", "iqm-ci", "mean-ci")
BOOTSTRAP_SEED = 0  # fixed, so the same runs always give the same intervals
BOOTSTRAP_SAMPLES = 2000
MIN_BOOTSTRAP_SAMPLES = 100  # a 95% percentile interval needs a few dozen resamples in each 2.5% tail


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stat", choices=STATISTICS, default="mean-se",
                        help="what the lines and bands show across seeds: mean-se = mean +- 1 standard error "
                             "(default); iqm-ci = interquartile mean (middle 50%% of seeds, as in rliable) with a "
                             "95%% percentile-bootstrap confidence interval; mean-ci = mean with a 95%% "
                             f"percentile-bootstrap interval. The bootstrap uses a fixed seed ({BOOTSTRAP_SEED}), so "
                             "reruns give the same intervals")
    parser.add_argument("--bootstrap-samples", type=_resamples, default=BOOTSTRAP_SAMPLES, metavar="N",
                        help=f"bootstrap resamples per interval for iqm-ci and mean-ci (default {BOOTSTRAP_SAMPLES}, "
                             f"at least {MIN_BOOTSTRAP_SAMPLES})")


def _resamples(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < MIN_BOOTSTRAP_SAMPLES:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_BOOTSTRAP_SAMPLES}, got {n}")
    return n
