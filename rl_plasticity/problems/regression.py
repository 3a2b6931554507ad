"""Slowly-changing regression trained online through the learner core, all seeds in one batched run.

Seed s's network, data stream and method randomness come from generators derived from s alone, so a
seed run beside 29 others gives the same numbers as that seed run by itself.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from rl_plasticity.config import LayerSizes, OneOf, Range
from rl_plasticity.core.builders import METHOD_DEFAULTS, METHOD_RULES, build_learner, check_method_hooks
from rl_plasticity.core.layers import INITS
from rl_plasticity.core.metrics import LOG_DEFAULTS, LOG_RULES, DistanceFromInit, WeightChange
from rl_plasticity.core.networks import ACTIVATIONS, MLP, NORMS, mlp_config_problem
from rl_plasticity.core.step_size import STEP_SIZE_LOG_DEFAULTS, STEP_SIZE_LOG_RULES
from rl_plasticity.errors import UserError
from rl_plasticity.problems.headline import Headline
from rl_plasticity.problems.regression_stream import RegressionStream
from rl_plasticity.problems.supervised import log_net_metrics
from rl_plasticity.run.loop import check_finite, train_loop
from rl_plasticity.run.rundir import atomic_write_json
from rl_plasticity.run.seeding import generators
from rl_plasticity.run.stats import format_mean_se, mean_se
from rl_plasticity.run.tblog import SeedLogs

HEADLINE = Headline(metrics=["charts/binned_error"], x_label="examples",
                    charts=[("binned squared error", [r"^charts/binned_error$"])])

DEFAULTS = {
    "problem": "regression",
    "examples": 1_000_000,
    "bin_size": 20_000,
    # signal_task_switch: call the methods' task-switch hook at every bit flip (off: the learner is not told)
    "stream": {"inputs": 20, "slow_bits": 15, "change_every": 10_000, "target_hidden": 100, "beta": 0.7,
               "flip_one": False, "signal_task_switch": False},
    "net": {"hidden": [5], "activation": "relu", "init": "kaiming", "norm": "none"},
    **METHOD_DEFAULTS,
    "log": {"metrics_every": 20_000, "probe_size": 1000, "checkpoint_every": 100_000, **LOG_DEFAULTS,
            **STEP_SIZE_LOG_DEFAULTS},
}

RULES = {
    **METHOD_RULES, **LOG_RULES, **STEP_SIZE_LOG_RULES,
    "examples": Range(low=0, low_open=True),
    "bin_size": Range(low=0, low_open=True),
    "stream.inputs": Range(low=1),
    "stream.slow_bits": Range(low=0),
    "stream.change_every": Range(low=1),
    "stream.target_hidden": Range(low=1),
    "net.activation": OneOf(*ACTIVATIONS),
    "net.hidden": LayerSizes(),
    "net.init": OneOf(*INITS),
    "net.norm": OneOf(*NORMS),
    "log.metrics_every": Range(low=1),
    "log.probe_size": Range(low=1),
    "log.checkpoint_every": Range(low=1),
}


def check(cfg: dict) -> None:
    """Constraints that involve several keys."""
    s = cfg["stream"]
    check_method_hooks(cfg, {"task_switch"} if s["signal_task_switch"] else set(),
                       {"task_switch": "stream.signal_task_switch: true"})
    if s["slow_bits"] > s["inputs"]:
        raise UserError(f"config key 'stream.slow_bits' ({s['slow_bits']}) must be <= 'stream.inputs' ({s['inputs']})")
    if cfg["log"]["probe_size"] > s["change_every"]:
        raise UserError("config key 'log.probe_size' must be <= 'stream.change_every' (the probe is drawn from one phase)")
    for key, value in (("bin_size", cfg["bin_size"]), ("log.metrics_every", cfg["log"]["metrics_every"]),
                       ("log.checkpoint_every", cfg["log"]["checkpoint_every"])):
        if value % s["change_every"]:
            raise UserError(f"config key '{key}' ({value}) must be a multiple of 'stream.change_every' ({s['change_every']})")
    if cfg["examples"] % cfg["bin_size"]:
        raise UserError(f"config key 'examples' ({cfg['examples']}) must be a multiple of 'bin_size' ({cfg['bin_size']})")
    problem = mlp_config_problem(cfg)
    if problem:
        raise UserError(problem)


class RegressionRun:
    """All state of a batched run; `advance` trains every seed on one phase of the stream."""

    def __init__(self, cfg: dict, seeds: list[int]):
        self.cfg, self.seeds = cfg, seeds
        s = cfg["stream"]
        self.stream = RegressionStream(generators(seeds, "data"), inputs=s["inputs"], slow_bits=s["slow_bits"],
                                       change_every=s["change_every"], target_hidden=s["target_hidden"],
                                       beta=s["beta"], flip_one=s["flip_one"])
        n = cfg["net"]
        self.net = MLP([s["inputs"], *n["hidden"], 1], activation=n["activation"], init=n["init"],
                       replicas=len(seeds), norm=n["norm"])
        self.net.reset_parameters(generators(seeds, "init"))
        self.method_generators = generators(seeds, "method")
        self.learner = build_learner(self.net.parameters(), self.net.groups, cfg, self.method_generators,
                                     nets=[self.net])
        self.examples = 0
        self.error_sum = torch.zeros(len(seeds), dtype=torch.float64)
        self.bins: list[list[float]] = []  # per bin, the mean squared error of each seed
        self.weight_change = WeightChange(self.net.parameters())  # measured from the latest start or resume
        self.distance = DistanceFromInit(self.net)  # from the run's initial weights, kept in checkpoints

    # --- the run loop's protocol (rl_plasticity/run/loop.py)
    @property
    def step(self) -> int:
        return self.examples

    @property
    def total(self) -> int:
        return self.cfg["examples"]

    def done(self) -> bool:
        return self.examples >= self.total

    def should_checkpoint(self) -> bool:
        return self.examples % self.cfg["log"]["checkpoint_every"] == 0

    def advance(self, logs: SeedLogs, bar=None) -> None:
        """One phase of the stream; a bin's errors and the plasticity metrics when they are due."""
        def log_bin(errors: list[float]) -> None:
            logs.per_seed("charts/binned_error", errors, self.examples)
            if bar is not None:
                bar.set_postfix(error=f"{sum(errors) / len(errors):.3f}")

        X = self.train_chunk(on_bin=log_bin)
        if self.cfg["stream"]["signal_task_switch"]:  # the next chunk starts after a bit flip
            self.learner.task_switch()
        L = self.cfg["log"]
        if self.examples % L["metrics_every"] == 0:
            _log_metrics(self, X[:, :L["probe_size"]], self.weight_change, logs)

    def train_chunk(self, on_bin=None) -> torch.Tensor:
        """Train on the next `change_every` examples, one example per step. Returns the chunk's inputs."""
        X, Y = self.stream.next_chunk()
        xs, ys = X.unsqueeze(2).unbind(1), Y.unsqueeze(2).unbind(1)  # T x [R, 1, in], T x [R, 1]
        net, learner, error_sum, bin_size = self.net, self.learner, self.error_sum, self.cfg["bin_size"]
        for x, y in zip(xs, ys):
            squared = (net(x).squeeze(2) - y).square()  # [R, 1]
            learner.update(squared.sum())
            error_sum += squared.detach().squeeze(1)
        check_finite(float(error_sum.sum()), f"example {self.examples + len(xs):,}")
        self.examples += len(xs)
        if self.examples % bin_size == 0:
            self.bins.append((error_sum / bin_size).tolist())
            error_sum.zero_()
            if on_bin:
                on_bin(self.bins[-1])
        return X

    def state_dict(self) -> dict:
        return {"learner": self.learner.state_dict(), "stream": self.stream.state_dict(), "examples": self.examples,
                "method_generators": [g.get_state() for g in self.method_generators],
                "error_sum": self.error_sum.clone(), "bins": self.bins, "init_weights": self.distance.state_dict()}

    def load_state_dict(self, sd: dict) -> None:
        self.learner.load_state_dict(sd["learner"])
        self.stream.load_state_dict(sd["stream"])
        for g, state in zip(self.method_generators, sd["method_generators"]):
            g.set_state(state)
        self.examples = int(sd["examples"])
        self.error_sum.copy_(sd["error_sum"])
        self.bins = [list(b) for b in sd["bins"]]
        self.weight_change = WeightChange(self.net.parameters())
        if "init_weights" in sd:  # older checkpoints: the init rebuilt from the seeds, as this run made it
            self.distance.load_state_dict(sd["init_weights"])


def summarize(bins: list[list[float]], bin_size: int, window: int = 200_000) -> dict:
    """Early (first bin) and late (mean over the last `window` examples) error: mean and standard error over seeds."""
    t = torch.tensor(bins, dtype=torch.float64)  # [bins, seeds]
    late_bins = min(len(t), max(1, window // bin_size))  # a run shorter than the window: all of it
    return {"seeds": t.shape[1], "examples": t.shape[0] * bin_size, "early": mean_se(t[0].tolist()),
            "late": mean_se(t[-late_bins:].mean(0).tolist()), "late_window": late_bins * bin_size}


def run(cfg: dict, seeds: list[int], run_dir: Path, resume: bool = False) -> dict:
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    state = RegressionRun(cfg, seeds)
    if not train_loop(state, run_dir, resume, partial(SeedLogs, run_dir, seeds),
                      f"regression x{len(seeds)} seeds", "example"):
        return {}
    summary = summarize(state.bins, cfg["bin_size"])
    summary["bins"] = state.bins
    atomic_write_json(run_dir / "results.json", summary)
    print(f"binned squared error over {len(seeds)} seed(s): first bin {format_mean_se(summary['early'])}, "
          f"last {summary['late_window']:,} examples {format_mean_se(summary['late'])}")
    return summary


def _log_metrics(state: RegressionRun, probe: torch.Tensor, weight_change: WeightChange, logs: SeedLogs) -> None:
    logs.per_seed("plasticity/net/weight_change", weight_change().tolist(), state.examples)
    log_net_metrics(logs, state.net, state.learner, probe, state.distance, state.cfg, state.examples)
