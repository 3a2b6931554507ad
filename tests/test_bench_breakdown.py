"""`bench ppo`'s breakdown: where an env step's time goes, part by part, for a config trained as `train` does."""

from __future__ import annotations

from pathlib import Path

import pytest

from rl_plasticity.bench.ppo_breakdown import PARTS, breakdown, print_breakdown
from rl_plasticity.config import read_yaml
from rl_plasticity.problems import resolve_config

REPO = Path(__file__).resolve().parents[1]
# One 256-step rollout, one epoch of two minibatches, metrics at every rollout; CBP replaces a unit now and then.
TINY = ["total_steps=512", "ppo.rollout_steps=256", "ppo.minibatch_size=128", "ppo.epochs=1",
        "log.probe_size=64", "log.metrics_every=256"]


@pytest.mark.parametrize("learner", ["std", "cbp"])
def test_every_part_is_measured_and_they_add_up_to_the_whole(learner, capsys):
    overrides = [*TINY, "cbp.maturity_threshold=1", "cbp.replacement_rate=0.01"] if learner == "cbp" else TINY
    cfg, _ = resolve_config(read_yaml(REPO / f"configs/friction_ant/{learner}.yaml"), overrides)
    parts = breakdown(cfg, seed=0, steps=512)
    assert set(parts) == {*PARTS, "total"}
    # Nested clocks: each part is an inner interval's share of its outer one, so none is negative ...
    assert all(parts[name] >= 0 for name in PARTS), parts
    assert sum(parts[name] for name in PARTS) == pytest.approx(parts["total"])
    # ... and each of the pieces a PPO step is made of was really timed.
    for name in ("env", "acting", "rollout", "prepare", "forward", "backward", "optimizer", "metrics", "logging"):
        assert parts[name] > 0, name
    assert (parts["methods"] > 0) == (learner == "cbp")  # std has no plasticity method to time
    print_breakdown(learner, parts)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{learner}: ") and [line.split()[0] for line in lines[1:]] == list(PARTS)
