"""A sweep committed to a repository resumes from a clone in another folder, exactly.

The sweep is interrupted after its first checkpoint, copied to another folder without its machine-local
`.sweep/` state (what a git clone of an experiment holds), resumed there, and compared with an
uninterrupted sweep of the same config and seed.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from sweeps import TINY, cli, sweep_argv

HOOKS = Path(__file__).resolve().parent / "hooks"
OVERRIDES = [*TINY, "examples=3000"]


def _wait_for(predicate, timeout=120.0):
    """Polls for a state the run reaches by itself; the timeout only stops a test that hangs."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_sweep_copied_to_another_folder_resumes_to_the_uninterrupted_result(tmp_path):
    made = tmp_path / "machine_a" / "sweep"
    run = made / "bp" / "seed_0"
    paused = tmp_path / "paused"
    env = {**os.environ, "RL_PLASTICITY_NO_PROGRESS": "1", "PYTHONPATH": str(HOOKS),
           "RLP_TEST_PAUSE_AFTER_CHECKPOINT": str(run), "RLP_TEST_PAUSE_MARKER": str(paused)}
    argv = sweep_argv(made, "--workers", "1", learners=["bp"], seeds="0-0", overrides=OVERRIDES)
    proc = subprocess.Popen([sys.executable, "-m", "rl_plasticity.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    _wait_for(paused.is_file)  # the run has saved its first checkpoint and waits
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert not (run / "results.json").exists()

    clone = tmp_path / "machine_b" / "clone" / "sweep"
    shutil.copytree(made, clone, ignore=shutil.ignore_patterns(".sweep"))
    shutil.rmtree(tmp_path / "machine_a")
    for path in clone.rglob("*"):  # what gets committed names no folder of the machine that made it
        if path.is_file() and path.suffix in {".json", ".yaml"}:
            assert str(tmp_path) not in path.read_text(encoding="utf-8"), path
    r = cli("sweep", "--resume", str(clone))
    assert r.returncode == 0, r.stderr

    fresh = tmp_path / "uninterrupted"
    r = cli(*sweep_argv(fresh, "--workers", "1", learners=["bp"], seeds="0-0", overrides=OVERRIDES))
    assert r.returncode == 0, r.stderr
    resumed = json.loads((clone / "bp" / "seed_0" / "results.json").read_text())
    uninterrupted = json.loads((fresh / "bp" / "seed_0" / "results.json").read_text())
    assert resumed["bins"] == uninterrupted["bins"]
