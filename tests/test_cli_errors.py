"""Bad input: one clear line naming the problem, exit code 2, nothing written."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "regression"


def train(tmp_path, *args):
    out = tmp_path / "run"
    env = {**os.environ, "RL_PLASTICITY_NO_PROGRESS": "1"}
    r = subprocess.run([sys.executable, "-m", "rl_plasticity.cli", "train", *args, "--out", str(out)],
                       capture_output=True, text=True, env=env)
    return r, out


@pytest.mark.parametrize("args, words", [
    (["--set", "cbp.replacment_rate=0.1"], ["unknown config key", "cbp.replacement_rate"]),
    (["--set", "examples=many"], ["examples", "int"]),
    (["--set", "cbp.replacement_rate=-1"], ["cbp.replacement_rate", "[0, 1]"]),
    (["--set", "examples=0"], ["examples", "> 0"]),
    (["--set", "optimizer.lr=true"], ["optimizer.lr"]),
    (["--set", "examples"], ["examples"]),
    (["--set", "net.hidden=[0]"], ["net.hidden", "list of positive integers"]),
    (["--seeds", "0"], ["--seeds"]),
])
def test_bad_config_values(tmp_path, args, words):
    r, out = train(tmp_path, str(CONFIGS / "cbp.yaml"), *args)
    assert r.returncode == 2
    line = r.stderr.strip()
    assert "\n" not in line and line.startswith("rl-plasticity: error:")
    for w in words:
        assert w in line
    assert not out.exists()


def test_missing_config_file(tmp_path):
    r, out = train(tmp_path, str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "config file not found" in r.stderr and not out.exists()


def test_unknown_problem(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("problem: juggling\n")
    r, out = train(tmp_path, str(cfg))
    assert r.returncode == 2 and "problem" in r.stderr and not out.exists()
