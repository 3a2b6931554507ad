"""Shared by test_sweep and test_compare: tiny regression sweeps and one finished sweep reused by both."""

import os
import subprocess
import sys
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "regression"
TINY = ["examples=1000", "bin_size=500", "stream.change_every=500", "log.metrics_every=500", "log.probe_size=100",
        "log.checkpoint_every=500"]
LEARNERS = ["bp", "l2"]
_finished: dict = {}


def sets(overrides):
    return [x for s in overrides for x in ("--set", s)]


def sweep_argv(out, *extra, learners=LEARNERS, seeds="0-1", overrides=TINY):
    return ["sweep", *(str(CONFIGS / f"{name}.yaml") for name in learners), "--seeds", seeds, "--out", str(out),
            *sets(overrides), *extra]


def cli(*args, **kw):
    env = {**os.environ, "RL_PLASTICITY_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, "-m", "rl_plasticity.cli", *args], capture_output=True, text=True,
                          env=env, **kw)


def finished_local_sweep(tmp_path_factory):
    """(sweep dir, completed process) of a 2 learners x 2 seeds local sweep, run once per test session."""
    if "local" not in _finished:
        out = tmp_path_factory.mktemp("sweeps") / "local"
        r = cli(*sweep_argv(out, "--workers", "2"))
        assert r.returncode == 0, r.stderr
        _finished["local"] = (out, r)
    return _finished["local"]
