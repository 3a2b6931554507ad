"""A run killed while it writes a checkpoint, then resumed: it cleans up and continues from the newest
checkpoint it can read, and ends with the numbers of a run that was never interrupted."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rl_plasticity.cli import main as cli_main
from rl_plasticity.run.tblog import read_scalars

ROOT = Path(__file__).resolve().parents[1]
HOOKS = Path(__file__).resolve().parent / "hooks"
# 6 bins of 500 examples, a checkpoint every 500 (the last two kept), 2 seeds batched.
ARGS = ["train", str(ROOT / "configs/regression/cbp.yaml"), "--seeds", "2"] + [
    x for s in ["examples=3000", "bin_size=500", "stream.change_every=500", "log.metrics_every=500",
                "log.probe_size=100", "log.checkpoint_every=500"] for x in ("--set", s)]


def hooked_env(**hooks) -> dict:
    return {**os.environ, "RL_PLASTICITY_NO_PROGRESS": "1", "PYTHONPATH": str(HOOKS), **hooks}


@pytest.mark.usefixtures("one_thread")
def test_killed_mid_checkpoint_write_resumes_from_the_newest_readable_checkpoint(tmp_path, capsys):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert cli_main([*ARGS, "--out", str(straight)]) == 0

    r = subprocess.run([sys.executable, "-m", "rl_plasticity.cli", *ARGS, "--out", str(killed)],
                       capture_output=True, text=True, env=hooked_env(RLP_TEST_KILL_DURING_CHECKPOINT="2500"))
    assert r.returncode == -signal.SIGKILL, r.stderr
    folder = killed / "checkpoints"
    names = sorted(p.name for p in folder.iterdir())
    assert names[1:] == ["ckpt-1500.pt", "ckpt-2000.pt"]
    assert names[0].startswith(".ckpt-2500.pt.") and names[0].endswith(".tmp")  # the half-written one
    # The newest complete checkpoint is damaged too (say, a disk error): resuming goes back one more.
    data = bytearray((folder / "ckpt-2000.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "ckpt-2000.pt").write_bytes(bytes(data))

    capsys.readouterr()
    assert cli_main(["train", "--resume", str(killed)]) == 0
    out = capsys.readouterr()
    assert "checksum mismatch" in out.err and "resuming from step 1,500 (ckpt-1500.pt)" in out.err
    assert "left by a write that was cut off" in out.out
    assert not [p for p in killed.rglob("*.tmp")]
    assert sorted(p.name for p in folder.iterdir()) == ["ckpt-2500.pt", "ckpt-3000.pt"]
    assert json.loads((killed / "results.json").read_text()) == json.loads((straight / "results.json").read_text())
    for seed in ("seed_0", "seed_1", "mean"):
        assert read_scalars(killed / "tb" / seed) == read_scalars(straight / "tb" / seed)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stopped_run_exits_with_the_signals_code_and_resumes(tmp_path, sig, code):
    """Ctrl-C and SIGTERM save a checkpoint and stop with the shell's codes, as a stopped sweep does."""
    run, paused = tmp_path / "run", tmp_path / "paused"
    proc = subprocess.Popen([sys.executable, "-m", "rl_plasticity.cli", *ARGS, "--out", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=hooked_env(RLP_TEST_PAUSE_AFTER_CHECKPOINT=str(run), RLP_TEST_PAUSE_MARKER=str(paused)))
    deadline = time.monotonic() + 120  # only stops a test that hangs; the run waits for the signal
    while not paused.is_file():
        assert time.monotonic() < deadline and proc.poll() is None, "the run never paused"
        time.sleep(0.1)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert f"continue with --resume {run}" in out and not (run / "results.json").exists()
    assert cli_main(["train", "--resume", str(run)]) == 0 and (run / "results.json").is_file()
