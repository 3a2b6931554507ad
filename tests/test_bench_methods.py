"""`bench ppo --methods`: each learner's speed as a ratio to the paper's std; every friction_ant config trains."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rl_plasticity.bench.ppo_speed import method_names
from rl_plasticity.cli import main as cli_main
from rl_plasticity.config import read_yaml
from rl_plasticity.errors import UserError
from rl_plasticity.problems import resolve_config
from rl_plasticity.problems.mujoco_ppo import PPORun

REPO = Path(__file__).resolve().parents[1]
FRICTION_ANT = sorted((REPO / "configs/friction_ant").glob("*.yaml"))
# One 64-step rollout, one epoch of two minibatches; short episodes and phases, so that the friction changes
# inside the rollout and a learner told of it (env.signal_task_switch) gets its task switch after the update.
TINY = ["ppo.rollout_steps=64", "ppo.minibatch_size=32", "ppo.epochs=1", "log.probe_size=32",
        "env.max_episode_steps=10", "env.change_every=16"]


def test_methods_option_prints_each_ratio_to_std(capsys):
    # One 2048-step rollout per run (--steps rounds up), two interleaved repeats: four runs in all.
    assert cli_main(["bench", "ppo", "--steps", "1", "--repeats", "2", "--methods", "weight_clipping", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    figures = json.loads(lines[-1])
    assert figures["steps"] == 2048 and set(figures["methods"]) == {"std", "weight_clipping"}
    assert [line.split()[0] for line in lines[:4]] == ["std", "weight_clipping", "weight_clipping", "std"]
    ratio = figures["methods"]["weight_clipping"]["ratio_to_std"]
    low, high = figures["methods"]["weight_clipping"]["ratio_range"]
    assert isinstance(ratio, float) and math.isfinite(ratio) and 0 < low <= ratio <= high
    assert "ratio_to_std" not in figures["methods"]["std"]
    printed = [line for line in lines if line.startswith("weight_clipping") and "x the paper std's" in line]
    assert len(printed) == 1 and float(printed[0].split()[1].rstrip("x")) == pytest.approx(ratio, abs=5e-4)


def test_methods_all_names_every_learner_but_std_and_unknown_ones_are_refused():
    names = method_names(["all"])
    assert names == sorted(p.stem for p in FRICTION_ANT if p.stem != "std")
    assert {"cbp", "l2_init", "parseval", "swr", "weight_clipping", "hare_tortoise", "injection", "layer_norm",
            "crelu"} <= set(names)
    assert method_names(["swr", "cbp", "swr"]) == ["swr", "cbp"]
    with pytest.raises(UserError, match="no config nope.yaml"):
        method_names(["cbp", "nope"])


def test_bad_methods_name_exits_2_before_timing_anything(capsys):
    assert cli_main(["bench", "ppo", "--methods", "std"]) == 2  # std is the baseline, not a method
    out = capsys.readouterr()
    assert "no config std.yaml" in out.err and out.out == ""


@pytest.mark.parametrize("config", FRICTION_ANT, ids=lambda p: p.stem)
def test_every_friction_ant_config_runs_one_update(config):
    cfg, _ = resolve_config(read_yaml(config), TINY)
    run = PPORun(cfg, seed=0)
    enabled = [m.name for m in run.agent.learner.methods]
    assert enabled == [k for k, v in cfg.items() if isinstance(v, dict) and v.get("enabled")]
    _, losses, _ = run.train_update()
    assert run.steps == 64 and losses and all(math.isfinite(v) for v in losses.values())
    stats = run.agent.learner.stats()
    assert all(math.isfinite(v) for v in stats.values())
    if config.stem == "injection":  # told of the friction change inside the rollout: one injection
        assert run.phase() > 0 and stats["reset/resets"] == 1.0
